"""Shared fixtures: the repo root, and a tiny project that ran the whole pipeline once."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True,
        timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command; on failure show its output, which pytest would otherwise hide."""
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A copy of this repo with tiny params and data, after one full `dvc repro`.

    FERPIPE_TINY_PROJECT=<dir> reuses one made earlier (`python -m ferpipe.pipeline.tiny` + `dvc repro`)."""
    from ferpipe.pipeline.tiny import make_project

    if os.environ.get("FERPIPE_TINY_PROJECT"):
        return Path(os.environ["FERPIPE_TINY_PROJECT"])

    dest = make_project(tmp_path_factory.mktemp("tiny") / "project", ROOT)
    run([sys.executable, "-m", "dvc", "repro"], dest, env={"MLFLOW_TRACKING_URI": ""})
    return dest
