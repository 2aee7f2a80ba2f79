"""The worker (``python -m gpu_worker``) as local processes: start, wait, serve, stop."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

PING_TIMEOUT_S = 900.0


class WorkerProcesses:
    """Starts worker processes with one command and environment; stops those still running."""

    def __init__(self, command: list[str], env: Mapping[str, str]) -> None:
        self._command = command
        self._env = dict(env)
        self._running: set[subprocess.Popen[bytes]] = set()

    def spawn(self, args: list[str], base: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        """A worker with ``args``, its output in ``base/worker.log``."""
        with (base / "worker.log").open("ab") as log:
            process = subprocess.Popen(
                [*self._command, *args],
                env={**self._env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._running.add(process)
        return process

    def run(self, args: list[str], base: Path, env: Mapping[str, str]) -> int:
        """Run a worker to its end; its exit code."""
        process = self.spawn(args, base, env)
        try:
            return process.wait()
        finally:
            self._running.discard(process)

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        terminate(process)
        self._running.discard(process)

    def stop_all(self) -> None:
        for process in list(self._running):
            self.stop(process)


def terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_ping(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + PING_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited with code {process.returncode} before /ping")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the worker did not answer /ping within {PING_TIMEOUT_S:.0f}s")


def log_tail(path: Path, lines: int = 5) -> str:
    if not path.exists():
        return ""
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
