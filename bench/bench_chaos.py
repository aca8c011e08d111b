"""The long chaos run: 20 releases with analysis while the operator is SIGKILLed every 1-4 s
and the apiserver is restarted once (the suite runs 6 of them; see tests/test_chaos.py).

    python bench/bench_chaos.py [RELEASES] [SEED]

Prints the outcomes, the number of kills and the wall time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    releases = sys.argv[1] if len(sys.argv) > 1 else "20"
    seed = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("TEAL_CHAOS_SEED", "12")
    env = {**os.environ, "TEAL_CHAOS_RELEASES": releases, "TEAL_CHAOS_SEED": seed}
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/test_chaos.py"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    for line in res.stdout.splitlines():
        if line.startswith("chaos:") and ("releases" in line or "restarted" not in line):
            print(line)
    print(
        f"chaos: {releases} releases, seed {seed}: {'passed' if res.returncode == 0 else 'FAILED'} "
        f"in {time.monotonic() - t0:.0f} s"
    )
    if res.returncode:
        print(res.stdout[-4000:], res.stderr[-2000:])
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
