"""MLflow tracking: one run per stage execution, tagged with code and data versions."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator

import mlflow
import yaml

DEFAULT_EXPERIMENT = "fer-pipeline"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else a SQLite DB at the repo root (the cwd DVC runs in)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def use_tracking(uri: str | None = None) -> str:
    """Point MLflow at `uri` (default `tracking_uri()`) and make sure its store exists.

    MLflow creates a fresh SQLite schema without a lock, so two processes opening a new
    DB at once (a tuning chief and its workers, or a reader polling it) can both run
    CREATE TABLE and one fails; an exclusive file lock makes the creation happen once.
    """
    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        key = hashlib.sha1(uri.encode()).hexdigest()[:16]
        with open(Path(tempfile.gettempdir()) / f"ferpipe-mlflow-{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
    return uri


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def git_state() -> tuple[str, bool]:
    """(commit, dirty); dirty means tracked files differ from the commit."""
    commit = _git("rev-parse", "HEAD") or "unknown"
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return commit, dirty


def data_version(path: str | Path) -> str:
    """DVC md5 of a data input: from its .dvc file, from dvc.lock, else hashed here."""
    path = Path(path)
    dvc_file = path.with_name(path.name + ".dvc")
    if dvc_file.exists():
        return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]
    lock = Path("dvc.lock")
    if lock.exists():
        for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
            for out in stage.get("outs", []):
                if Path(out["path"]) == path:
                    return out["md5"]
    if path.is_file():
        digest = hashlib.md5()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    return "untracked"


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become strings."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if not isinstance(value, (list, tuple)) else ",".join(map(str, value))
    return flat


def log_keras_model(model: Any, example: Any) -> Any:
    """Log a Keras model to the active run with a signature inferred on `example`; returns its info."""
    import keras
    import numpy as np
    import tensorflow as tf
    from mlflow.models import infer_signature

    signature = infer_signature(example, np.asarray(model(example)))
    return mlflow.keras.log_model(model, name="model", signature=signature,
                                  pip_requirements=[f"tensorflow=={tf.__version__}",
                                                    f"keras=={keras.__version__}"])


def _raise_on_sigterm(signum, frame):  # noqa: ARG001
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def stage_run(stage: str, params: dict[str, Any], data_path: str | Path,
              run_name: str | None = None, nested: bool = False,
              tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """Open an MLflow run for one stage; any exception or SIGTERM ends it as FAILED."""
    use_tracking()
    if not nested:
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT))
    commit, dirty = git_state()
    all_tags = {
        "stage": stage,
        "mlflow.source.git.commit": commit,
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "data_path": str(data_path),
        "data_version": data_version(data_path),
        **(tags or {}),
    }
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm) if not nested else None
    try:
        with mlflow.start_run(run_name=run_name or stage, nested=nested, tags=all_tags) as run:
            if params:
                mlflow.log_params(flatten(params))
            yield run
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
