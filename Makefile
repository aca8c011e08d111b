# The two commands a newcomer needs (see README.md):
#   make sandbox   a local control plane + Prometheus, the operator, and a demo release
#   make test      the whole test suite against real components
.PHONY: sandbox sandbox-bad test test-fast lint bench crds image dist

sandbox:
	bash hack/sandbox.sh

sandbox-bad:
	bash hack/sandbox.sh --bad-release

test:
	bash hack/test.sh

# the pure tests only (no cluster, no Prometheus): seconds
test-fast:
	bash hack/test.sh -m "not cluster and not prometheus"

# ruff (lint + format check) and mypy (strict on the core, the API and the Kubernetes client)
lint:
	bash hack/lint.sh

bench:
	bash hack/bench.sh

crds:
	bash hack/sync-crds.sh

# the operator image as an OCI archive, built without a Docker daemon (dist/teal-image.oci.tar)
image:
	bash hack/build-image.sh

# what a release ships: install.yaml (+ namespaced variant), the packaged chart, the wheel
dist:
	bash hack/build-dist.sh
