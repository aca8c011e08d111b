# The two commands a newcomer needs (see README.md):
#   make sandbox   a local control plane + Prometheus, the operator, and a demo release
#   make test      the whole test suite against real components
.PHONY: sandbox sandbox-bad test test-fast bench lint crds

sandbox:
	bash hack/sandbox.sh

sandbox-bad:
	bash hack/sandbox.sh --bad-release

test:
	bash hack/test.sh

# the pure tests only (no cluster, no Prometheus): seconds
test-fast:
	bash hack/test.sh -m "not cluster and not prometheus"

bench:
	bash hack/bench.sh

crds:
	bash hack/sync-crds.sh
