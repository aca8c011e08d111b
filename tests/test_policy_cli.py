"""A hold said by kubectl teal: the HELD column of `list` and the Held line of `get`'s tree
(teal.cli_render), from what the core writes (reason HeldByPolicy, release.heldSince)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from teal.cli_render import list_table, rollout_tree

NOW = dt.datetime(2026, 3, 27, 21, 0, tzinfo=dt.UTC)
MSG = "revision 2 on green waits before promotion: held by window trading-hours (Europe/London): opens Mon 09:00, in 2d12h"


def rollout(status: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": "checkout", "namespace": "shop", "generation": 2, "creationTimestamp": "2026-03-20T00:00:00Z"}
    spec = {"strategy": {"blueGreen": {"activeServices": ["app"]}}}
    return {"metadata": meta, "spec": spec, "status": {"observedGeneration": 2, **status}}


HELD = rollout(
    {
        "phase": "Progressing",
        "reason": "HeldByPolicy",
        "message": MSG,
        "currentRevision": "2",
        "release": {"revision": "2", "color": "green", "heldSince": "2026-03-27T19:00:00Z", "heldSeconds": 30},
    }
)


def column(table: str, name: str) -> list[str]:
    lines = table.splitlines()
    i = lines[0].split().index(name)
    return [line.split()[i] for line in lines[1:]]


def test_list_says_for_how_long_a_release_is_held() -> None:
    healthy = rollout({"phase": "Healthy", "reason": "Healthy", "message": "revision 1 is live on blue"})
    before_start = rollout({"phase": "Progressing", "reason": "HeldByPolicy", "message": "the new template waits: x"})
    out = list_table([HELD, healthy, before_start], now=NOW)
    assert column(out, "HELD") == ["2h", "-", "yes"]


def test_get_says_which_window_holds_and_when_it_opens() -> None:
    tree = rollout_tree(HELD, {}, {}, now=NOW, unicode=False)
    held = [line for line in tree.splitlines() if "Held " in line]
    assert held and held[0].split("Held", 1)[1].strip() == (
        "held by window trading-hours (Europe/London): opens Mon 09:00, in 2d12h"
    )
    assert "since 2026-03-27T19:00:00Z (2h)" in tree and "earlier holds of this release: 30s" in tree
    quiet = rollout_tree(rollout({"phase": "Healthy", "message": "live"}), {}, {}, now=NOW, unicode=False)
    assert "Held" not in quiet
