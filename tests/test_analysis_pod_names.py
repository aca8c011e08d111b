"""{{podRegex}}: the regex of a colour's pod names matches every name Kubernetes can give
that Deployment's pods and no pod of another Deployment (pure; the e2e analysis tests check
it against the pods of a real control plane)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teal.analysis.model import POD_NAME_CHARS, colour_deployment, pod_name, pod_regex

# Deployment names: DNS subdomains (lowercase alphanumerics, '-' and '.', alphanumeric at both ends)
_inner = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=0, max_size=60)
deployments = st.builds(lambda a, mid, b: a + mid + b, st.sampled_from("abcxz19"), _inner, st.sampled_from("abnz09"))
hashes = st.integers(min_value=0, max_value=2**32 - 1)
suffixes = st.text(alphabet=POD_NAME_CHARS, min_size=5, max_size=5)


@given(deployments, hashes, suffixes)
def test_every_pod_of_the_deployment_matches(deployment, template_hash, suffix):
    name = pod_name(deployment, template_hash, suffix)
    assert len(name) <= 63
    assert re.fullmatch(pod_regex(deployment), name), (deployment, name, pod_regex(deployment))


@given(deployments.filter(lambda d: len(d) <= 45), deployments.filter(lambda d: len(d) <= 45), hashes, suffixes)
def test_no_pod_of_another_deployment_matches(mine, other, template_hash, suffix):
    """Up to 45 characters pod names are never cut, and the dash-free hash and suffix leave
    no room for another Deployment's name (longer ones share what Kubernetes cuts)."""
    if mine != other:
        assert not re.fullmatch(pod_regex(mine), pod_name(other, template_hash, suffix))


@pytest.mark.parametrize("rollout,other", [("app", "app-blue-x"), ("checkout", "checkout-blue"), ("a-b", "a")])
def test_colour_of_a_rollout_named_like_another_colour(rollout, other):
    for color in ("blue", "green"):
        regex = pod_regex(colour_deployment(rollout, color))
        for c in ("blue", "green"):
            theirs = pod_name(colour_deployment(other, c), 3158797353, "x2mzq")
            assert not re.fullmatch(regex, theirs), (regex, theirs)


def test_known_real_names():
    # names as a Kubernetes v1.34 control plane gave them (hash 10 and 9 characters long)
    assert re.fullmatch(pod_regex("app-green"), "app-green-6b9c8d4f7d-x2mzq")
    assert re.fullmatch(pod_regex("checkout-blue"), "checkout-blue-5d8f9c7b6-bcdfg")
    assert not re.fullmatch(pod_regex("app-green"), "app-green-6b9c8d4f7d-x2mzq-1")
    assert not re.fullmatch(pod_regex("app-green"), "app-green-6a9c8d4f7d-x2mzq")  # 'a' is in no hash


def test_regex_needs_no_escaping_in_promql():
    regex = pod_regex("my.app-v1.2-blue")
    assert "\\" not in regex and '"' not in regex and "'" not in regex and "`" not in regex
    assert re.fullmatch(regex, pod_name("my.app-v1.2-blue", 42, "bcdfg"))
    assert not re.fullmatch(regex, pod_name("myxapp-v1.2-blue", 42, "bcdfg"))


def test_pod_name_refuses_what_kubernetes_never_makes():
    with pytest.raises(ValueError):
        pod_name("app", 2**32, "bcdfg")
    with pytest.raises(ValueError):
        pod_name("app", 1, "aaaaa")
