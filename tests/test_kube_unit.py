"""Pure parts of the Kubernetes adapter."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teal.kube import fresh_available, merge_patch


def test_merge_patch_sets_changes_and_nulls_removals():
    old = {"a": 1, "b": {"c": 1, "d": 2}, "e": [1], "keep": "x"}
    new = {"a": 1, "b": {"c": 2}, "e": [2], "keep": "x", "f": {"g": 1}}
    assert merge_patch(old, new) == {"b": {"c": 2, "d": None}, "e": [2], "f": {"g": 1}}
    assert merge_patch(new, new) == {}


json_values = st.recursive(
    st.none() | st.integers() | st.text(max_size=3),
    lambda inner: st.dictionaries(st.text("abc", max_size=2), inner, max_size=3),
    max_leaves=8,
)
docs = st.dictionaries(st.text("abcd", max_size=2), json_values, max_size=4)


def apply(doc, patch):
    """RFC 7386 applied, as the apiserver does."""
    out = dict(doc)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict):
            out[k] = apply(out.get(k) if isinstance(out.get(k), dict) else {}, v)
        else:
            out[k] = v
    return out


def strip_nulls(doc):
    return {k: strip_nulls(v) if isinstance(v, dict) else v for k, v in doc.items() if v is not None}


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # CI shares 2 cores with a cluster
@given(docs, docs)
def test_merge_patch_turns_old_into_new(old, new):
    assert apply(strip_nulls(old), merge_patch(strip_nulls(old), strip_nulls(new))) == strip_nulls(new)


def test_fresh_available_never_counts_old_pods():
    assert fresh_available(updated=3, available=3, total=3) == 3
    assert fresh_available(updated=1, available=3, total=4) == 0  # the 3 available may all be old
    assert fresh_available(updated=2, available=3, total=3) == 2
    assert fresh_available(updated=0, available=3, total=3) == 0
