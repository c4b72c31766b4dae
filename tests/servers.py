"""Servers the tests start: a free port, a readiness wait, a subprocess served for a block,
and the headless Chromium the browser tests drive."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, alive: Callable[[], bool], what: str = "server",
             log: Callable[[], str] | None = None, limit_s: float = 600) -> None:
    """Until `url` answers. A readiness wait, not a timing check: a busy CI machine loads
    TensorFlow slowly, so the limit is generous, and a server that exits fails at once."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if not alive() or time.monotonic() > deadline:
                state = "exited" if not alive() else "did not start"
                raise AssertionError(f"{what} {state}:\n{log() if log else ''}") from None
            time.sleep(0.5)


@contextmanager
def served(cmd: list[str], cwd: Path, probe: str, env: dict | None = None,
           what: str = "server", limit_s: float = 600) -> Iterator[subprocess.Popen]:
    """`cmd` running in its own process group (its workers stop with it) until the block
    ends, once `probe` answers; its output is kept outside `cwd` and shown if it fails.
    Yields the process (its pid, e.g. for its memory)."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

        def tail() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")[-3000:]
        try:
            wait_for(probe, lambda: proc.poll() is None, what, tail, limit_s)
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
