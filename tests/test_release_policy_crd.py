"""The ReleasePolicy / ClusterReleasePolicy CRDs (crds/releasepolicies.yaml): one schema for both,
installed into the real kube-apiserver, refusing at apply time what CEL can check, and agreeing
with teal.policy on what the apiserver accepts."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from cli_helpers import run
from teal import policy as P

ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = ROOT / "crds" / "releasepolicies.yaml"

TRADING = {"name": "trading-hours", "days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "start": "09:00", "end": "16:00"}


def crds() -> dict[str, dict]:
    return {d["spec"]["names"]["kind"]: d for d in yaml.safe_load_all(CRD_FILE.read_text()) if d}


def test_both_kinds_share_one_schema():
    c = crds()
    assert set(c) == {"ReleasePolicy", "ClusterReleasePolicy"}
    assert (c["ReleasePolicy"]["spec"]["scope"], c["ClusterReleasePolicy"]["spec"]["scope"]) == ("Namespaced", "Cluster")
    (a,), (b,) = c["ReleasePolicy"]["spec"]["versions"], c["ClusterReleasePolicy"]["spec"]["versions"]
    assert a == b


@pytest.fixture(scope="module")
def ns(cluster, kubectl, teal_crds):
    assert "releasepolicies.yaml" in teal_crds
    name = f"rp-{uuid.uuid4().hex[:6]}"
    run([kubectl, "create", "namespace", name])
    yield name
    run([kubectl, "delete", "namespace", name, "--wait=false"])


def apply(kubectl: str, ns: str, spec: dict, kind: str = "ReleasePolicy", check: bool = True):
    meta = {"name": f"p-{uuid.uuid4().hex[:6]}"}
    if kind == "ReleasePolicy":
        meta["namespace"] = ns
    doc = {"apiVersion": "teal.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}
    return run(
        [kubectl, "apply", "--dry-run=server", "--validate=strict", "-o", "yaml", "-f", "-"],
        input=yaml.safe_dump(doc),
        check=check,
    )


GOOD = [
    {"timeZone": "Europe/London", "windows": [TRADING]},
    {
        "timeZone": "America/New_York",
        "behaviour": "HoldBeforeStart",
        "windows": [{"name": "nightly", "schedule": "0 22 * * MON-FRI", "duration": "2h30m"}],
        "denyWindows": [
            {"name": "quarter-close", "from": "2026-12-28T00:00", "until": "2027-01-04T00:00"},
            {"name": "weekend", "days": ["Sat", "Sun"], "start": "00:00", "end": "24:00"},
        ],
        "rolloutSelector": {"matchLabels": {"tier": "frontend"}},
        "namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]},
    },
    {"freeze": {"reason": "incident 4711", "by": "alice", "until": "2026-12-02T09:00:00Z"}},
]


@pytest.mark.parametrize("spec", GOOD)
@pytest.mark.parametrize("kind", ["ReleasePolicy", "ClusterReleasePolicy"])
def test_good_policies_are_accepted_and_defaulted(kubectl, ns, spec, kind):
    got = yaml.safe_load(apply(kubectl, ns, spec, kind).stdout)["spec"]
    assert got["behaviour"] == spec.get("behaviour", "HoldBeforePromotion")
    assert got["timeZone"] == spec.get("timeZone", "UTC")
    P.policy_from_spec("p", got)  # what the apiserver accepts, the evaluator reads


BAD = [
    ({"timeZone": "UTC"}, "at least one window"),
    ({"windows": [dict(TRADING, days=["Monday"])]}, 'Unsupported value: "Monday"'),
    ({"windows": [dict(TRADING, start="9:00")]}, "spec.windows[0].start"),
    ({"windows": [dict(TRADING, end="24:01")]}, "spec.windows[0].end"),
    ({"windows": [dict(TRADING, end="09:00")]}, "an empty window"),
    ({"windows": [{"name": "x", "days": ["Mon"], "start": "09:00"}]}, "days, start and end go together"),
    ({"windows": [dict(TRADING, schedule="0 9 * * *", duration="1h")]}, "exactly one of"),
    ({"windows": [{"name": "x", "schedule": "0 9 * * *", "duration": "169h"}]}, "between 1m and 168h"),
    ({"windows": [{"name": "x", "schedule": "0 9 * * *", "duration": "0m"}]}, "between 1m and 168h"),
    ({"windows": [{"name": "x", "from": "2027-01-04T00:00", "until": "2026-12-28T00:00"}]}, "until must be after from"),
    ({"windows": [TRADING, TRADING]}, "Duplicate value"),
    ({"timeZone": "Europe/London; rm", "windows": [TRADING]}, "spec.timeZone"),
    ({"behaviour": "HoldForever", "windows": [TRADING]}, 'Unsupported value: "HoldForever"'),
    ({"freeze": {"by": "alice"}}, "spec.freeze.reason"),
    # a selector that selects nothing by construction
    (
        {"windows": [TRADING], "rolloutSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": []}]}},
        "an In without values selects nothing",
    ),
    (
        {"windows": [TRADING], "namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "NotIn"}]}},
        "In and NotIn need values",
    ),
    (
        {"windows": [TRADING], "rolloutSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}},
        "Exists and DoesNotExist take none",
    ),
]


@pytest.mark.parametrize("spec, message", BAD, ids=[m for _, m in BAD])
def test_bad_policies_are_refused_at_apply_time(kubectl, ns, spec, message):
    proc = apply(kubectl, ns, spec, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "spec, error",
    [
        ({"timeZone": "Europe/Londn", "windows": [TRADING]}, "not a known IANA time zone"),
        ({"windows": [{"name": "x", "schedule": "0 25 * * *", "duration": "1h"}]}, "outside 0-23"),
    ],
)
def test_what_cel_cannot_check_passes_the_schema_and_fails_in_the_evaluator(kubectl, ns, spec, error):
    got = yaml.safe_load(apply(kubectl, ns, spec).stdout)["spec"]
    with pytest.raises(P.PolicyError, match=error):
        P.policy_from_spec("p", got)


def doc_examples() -> list[dict]:
    import re

    text = (ROOT / "docs" / "release-policy.md").read_text()
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def test_the_docs_show_every_kind_of_window():
    specs = [d["spec"] for d in doc_examples() if d["kind"] != "Rollout"]
    windows = [w for s in specs for w in (s.get("windows") or []) + (s.get("denyWindows") or [])]
    assert {"days", "schedule", "from"} <= {k for w in windows for k in w} and any("freeze" in s for s in specs)


@pytest.mark.parametrize("doc", doc_examples(), ids=lambda d: f"{d['kind']}-{d['metadata']['name']}")
def test_the_docs_examples_apply_and_evaluate(kubectl, ns, doc):
    doc = yaml.safe_load(yaml.safe_dump(doc))
    if doc["kind"] == "ReleasePolicy":
        doc["metadata"]["namespace"] = ns
    if doc["kind"] == "Rollout":
        doc["metadata"]["namespace"] = ns
    proc = run([kubectl, "apply", "--dry-run=server", "--validate=strict", "-o", "yaml", "-f", "-"], input=yaml.safe_dump(doc))
    if doc["kind"] == "Rollout":
        from teal.api import parse_spec

        assert parse_spec(yaml.safe_load(proc.stdout)["spec"]).release_policy is not None
        return
    P.policy_from_spec(doc["metadata"]["name"], yaml.safe_load(proc.stdout)["spec"])


def test_lint_checks_policies_offline(tmp_path):
    from cli_helpers import teal

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump_all(doc_examples()))
    res = teal("lint", "-f", str(good))
    assert res.code == 0, res
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "teal.dev/v1alpha1",
                    "kind": "ReleasePolicy",
                    "metadata": {"name": "zone"},
                    "spec": {"timeZone": "Europe/Londn", "windows": [TRADING]},
                },
                {
                    "apiVersion": "teal.dev/v1alpha1",
                    "kind": "ClusterReleasePolicy",
                    "metadata": {"name": "cron"},
                    "spec": {"windows": [{"name": "x", "schedule": "0 25 * * *", "duration": "1h"}]},
                },
                {
                    "apiVersion": "teal.dev/v1alpha1",
                    "kind": "ReleasePolicy",
                    "metadata": {"name": "days"},
                    "spec": {"windows": [dict(TRADING, days=["Monday"])]},
                },
            ]
        )
    )
    res = teal("lint", "-f", str(bad))
    assert res.code == 1, res
    text = res.out + res.err
    assert "'Europe/Londn' is not a known IANA time zone" in text and "outside 0-23" in text and "Monday" in text, text


# ---------------------------------------------------------------- a Rollout's spec.releasePolicy and allowRolloutOptOut


def apply_rollout(kubectl: str, ns: str, release_policy: dict, check: bool = True):
    doc = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text().split("---")[1])
    doc["metadata"]["namespace"] = ns
    doc["spec"]["releasePolicy"] = release_policy
    return run(
        [kubectl, "apply", "--dry-run=server", "--validate=strict", "-o", "yaml", "-f", "-"],
        input=yaml.safe_dump(doc),
        check=check,
    )


@pytest.mark.parametrize("override", [{"policies": ["trading-hours"]}, {"policies": []}, {"exclude": ["nightly", "x.y"]}])
def test_a_rollout_override_is_accepted_and_parsed(kubectl, ns, override):
    from teal.api import parse_spec

    got = yaml.safe_load(apply_rollout(kubectl, ns, override).stdout)["spec"]
    assert got["releasePolicy"] == override
    ref = parse_spec(got).release_policy
    assert ref is not None and (ref.policies, ref.exclude) == (
        tuple(override["policies"]) if "policies" in override else None,
        tuple(override.get("exclude", ())),
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ({"policies": ["a"], "exclude": ["b"]}, "not both"),
        ({"exclude": ["Trading_Hours"]}, "spec.releasePolicy.exclude[0]"),
        ({"exclude": ["a", "a"]}, "Duplicate value"),
        ({"only": ["a"]}, 'unknown field "spec.releasePolicy.only"'),
    ],
)
def test_a_bad_rollout_override_is_refused_at_apply_time(kubectl, ns, override, message):
    proc = apply_rollout(kubectl, ns, override, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_a_policy_may_allow_rollouts_to_opt_out(kubectl, ns):
    got = yaml.safe_load(
        apply(kubectl, ns, {"windows": [TRADING], "allowRolloutOptOut": True}, kind="ClusterReleasePolicy").stdout
    )["spec"]
    assert got["allowRolloutOptOut"] is True
    plain = yaml.safe_load(apply(kubectl, ns, {"windows": [TRADING]}).stdout)["spec"]
    assert "allowRolloutOptOut" not in plain  # optional, no default: old objects read the same
