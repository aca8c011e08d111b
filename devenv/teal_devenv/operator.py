"""`teal run` as a real subprocess, for tests, benchmarks and the sandbox (so it can be
killed at any line and started again)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import teal

PACKAGE_ROOT = Path(teal.__file__).resolve().parents[1]  # the folder that holds the teal package


class OperatorProcess:
    def __init__(
        self,
        kubeconfig: str,
        log_path: Path,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_level: str = "info",
    ):
        self.kubeconfig = kubeconfig
        self.log_path = Path(log_path)
        self.extra_args = extra_args or []
        self.env = env or {}
        self.log_level = log_level
        self.proc: subprocess.Popen | None = None

    def start(self) -> OperatorProcess:
        env = dict(os.environ, KUBECONFIG=self.kubeconfig, PYTHONUNBUFFERED="1", **self.env)
        env["PYTHONPATH"] = str(PACKAGE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "teal.main",
                    "run",
                    "--liveness-port",
                    "0",
                    "--metrics-port",
                    "0",
                    "--log-level",
                    self.log_level,
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def restart(self) -> None:
        self.kill()
        self.start()

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
