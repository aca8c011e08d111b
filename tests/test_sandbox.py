"""The README's first command: the sandbox runs the main job to the end (a good release is
promoted, a bad one is caught by analysis and reverted) and leaves nothing running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus, pytest.mark.timeout(600)]


def test_sandbox_runs_a_good_and_a_bad_release(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "operator"), PYTHONUNBUFFERED="1")
    env.pop("KUBECONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "teal_devenv.sandbox", "--bad-release", "--dir", str(tmp_path / "sandbox")],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "revision 1 is live on blue" in out
    assert "release 2 is live on green" in out
    assert "the bad release was aborted; all traffic on green" in out
    assert "Failed (error-rate" in out
    assert "summary: releases 3, promoted 2, aborted 1" in out
    # it ends with kubectl teal stats (piped: ASCII), read from the Rollout's status.history
    assert "$ kubectl teal stats -n demo --since 1d" in out
    assert "Promoted 2, Aborted 1, Reverted 0, Superseded 0, RolledBack 0" in out
    assert "Change failure rate  0.0% (0 reverted of 2 that reached users)" in out
    assert "Lead time            median 20m" in out  # the sandbox's source-time: 20 minutes before each release
