"""MLflow tracking: one run per stage execution, tagged with code and data versions
(ferpipe.pipeline.lineage says which).

`use_tracking` checks the store before a stage does any work; `stage_run` closes the runs that
ended processes left RUNNING, tags why a run failed, and keeps a stage's outputs when the
tracking server goes away mid-run (stages log through `try_log`).
"""
from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import os
import re
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import mlflow
import requests
from mlflow.exceptions import MlflowException

from ferpipe.files import remove_stale_temporaries
from ferpipe.pipeline.config import PipelineError
from ferpipe.pipeline.lineage import data_version, git_state, stage_outputs
from ferpipe.pipeline.orphans import PROCESS_TAG, close_orphaned_runs, process_key
from ferpipe.store import tracking_uri

DEFAULT_EXPERIMENT = "fer-pipeline"
# MLflow's own defaults (7 retries, exponential backoff, 120 s timeout) stall 4 minutes on a
# dead server; these fail in seconds. A value already in the environment wins (slow servers).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
CONNECT_TIMEOUT_S = 5.0
# The start-up check's wait for a reply, unless MLFLOW_HTTP_REQUEST_TIMEOUT is set (the way to
# allow a slow server): a server that accepts and never answers is reported within ~13 s.
STARTUP_REPLY_TIMEOUT_S = 8.0


class TrackingError(PipelineError):
    """The tracking store can't be used; one line naming the URI or file (a PipelineError, so
    `run_main` prints it as one line and exits 1)."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def server_down(uri: str, timeout: float = STARTUP_REPLY_TIMEOUT_S) -> str | None:
    """Why the HTTP tracking server at `uri` can't be reached; None when it answers at all."""
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=(CONNECT_TIMEOUT_S, timeout))
    except requests.exceptions.SSLError:
        return None  # it answered; MLflow's own TLS settings decide the rest
    except requests.exceptions.ConnectTimeout:
        return f"no answer within {CONNECT_TIMEOUT_S:g} s"
    except requests.exceptions.ReadTimeout:
        return f"no reply within {timeout:g} s; raise MLFLOW_HTTP_REQUEST_TIMEOUT for a slow server"
    except requests.exceptions.RequestException as err:  # the OS error is buried deep in the text
        found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(err))
        return found.group(1).strip() if found else type(err).__name__
    return None


def _can_write(path: Path) -> bool:
    """Whether `path` opens for update: os.access can say yes where the file system says no."""
    try:
        with path.open("r+b"):
            return True
    except OSError:
        return False


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be made in `folder` (tried, not asked: /proc passes os.access)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _sqlite_file(uri: str) -> Path:
    """The file of a sqlite:/// URI; TrackingError unless it (or the folder for it) is writable.

    Checked up front: MLflow retries opening an unusable file for minutes before failing."""
    path = Path(uri[len("sqlite:///"):].split("?")[0])
    folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())  # MLflow makes the rest
    problem = ("is a folder, not a file" if path.is_dir() else
               "is not writable" if path.exists() and not _can_write(path) else
               f"cannot be written: {folder} is not writable" if not path.exists() and not _can_create_in(folder)
               else None)
    if problem:
        raise TrackingError(f"{path}: the MLflow tracking database {problem}; fix that, or set "
                            "MLFLOW_TRACKING_URI to another store")
    return path


def use_tracking(uri: str | None = None) -> str:
    """Point MLflow at `uri` (default `tracking_uri()`) and check its store; TrackingError if unusable.

    MLflow creates a fresh SQLite schema without a lock, so two processes opening a new
    DB at once (a tuning chief and its workers, or a reader polling it) can both run
    CREATE TABLE and one fails; an exclusive file lock makes the creation happen once.
    """
    user_timeout = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    check = float(user_timeout) if user_timeout else STARTUP_REPLY_TIMEOUT_S
    if uri.startswith(("http://", "https://")) and (why := server_down(uri, check)):
        raise TrackingError(f"tracking server {uri} is unreachable ({why}); start it, fix "
                            "MLFLOW_TRACKING_URI, or unset it to use the local mlflow.db")
    where = str(_sqlite_file(uri)) if uri.startswith("sqlite:///") else uri
    with contextlib.ExitStack() as stack:
        if uri.startswith("sqlite:///"):
            key = hashlib.sha1(uri.encode()).hexdigest()[:16]
            lock = stack.enter_context(open(Path(tempfile.gettempdir()) / f"ferpipe-mlflow-{key}.lock", "w"))
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
        except Exception as err:  # corrupt file, old schema, server error, refused login ...
            raise TrackingError(f"{where}: cannot use it as the MLflow tracking store "
                                f"({_first_line(err)}); fix or move it aside, or set "
                                "MLFLOW_TRACKING_URI to another store") from None
    return uri


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


class _Offline:
    """Set once the tracking server went away during this stage: why, and what was not logged."""
    reason: str | None = None
    skipped: collections.Counter = collections.Counter()


def _gone(err: BaseException) -> str | None:
    """Why the tracking server is gone, if `err` is an MLflow call failing for that reason."""
    uri = mlflow.get_tracking_uri()
    http = uri.startswith(("http://", "https://"))
    wait = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    return server_down(uri, wait) if http and isinstance(err, (MlflowException, requests.RequestException)) else None


def try_log(what: str, log: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`log(*args, **kwargs)`, an MLflow call; once the tracking server has gone away, count
    `what` as not logged and go on, so that a finished training is saved, not lost."""
    if _Offline.reason is None:
        try:
            return log(*args, **kwargs)
        except Exception as err:
            if (reason := _gone(err)) is None:
                raise
            _Offline.reason = reason
            print(f"warning: tracking server {mlflow.get_tracking_uri()} went away ({reason}); "
                  "going on without logging", file=sys.stderr)
    _Offline.skipped[what] += 1
    return None


def _end_run(status: str) -> None:
    """End the active run; with the server gone, one quick try (`mlflow.end_run` takes the run
    off the local stack before it tells the server, so the process is free of it either way)."""
    if _Offline.reason is None:
        try_log("run status", mlflow.end_run, status)
        return
    with mock.patch.dict(os.environ, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5"), \
            contextlib.suppress(Exception):
        mlflow.end_run(status)


def _failure_reason(err: BaseException) -> str:
    if isinstance(err, SystemExit) and err.code == 128 + signal.SIGTERM:
        return "killed by SIGTERM"
    text = str(err).strip()
    return (f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__)[:500]


def _raise_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def stage_run(stage: str, params: dict[str, Any], data_path: str | Path,
              run_name: str | None = None, nested: bool = False,
              tags: dict[str, str] | None = None,
              resume_run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Open an MLflow run for one stage, after closing runs that ended processes left RUNNING.

    An exception or SIGTERM ends it FAILED, the reason in its `error` tag and note. If the
    server goes away, `try_log` calls are skipped: a stage that completes keeps its outputs and
    exits 0 with a warning naming what was not logged; one that needed the server (a direct
    MLflow call failed) stops with a TrackingError. Either way its run stays RUNNING there.
    First it removes the temporaries killed atomic writes left among the stage's outputs.
    `resume_run_id`: reopen that run (an interrupted tuner search) instead of starting one.
    """
    if not nested:  # a kill -9 during an earlier run's atomic write left its temporaries behind
        for out in stage_outputs(stage, run_name):
            remove_stale_temporaries(out)
    uri = use_tracking()
    commit, dirty = git_state()
    all_tags = {
        "stage": stage,
        "mlflow.source.git.commit": commit,
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "data_path": str(data_path),
        "data_version": data_version(data_path),
        PROCESS_TAG: process_key(os.getpid()) or "",
        **(tags or {}),
    }
    try:
        if not nested:
            experiment = mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT))
            # a run being resumed (tune reopens its search's run) is not an orphan
            if closed := close_orphaned_runs(experiment.experiment_id, resume_run_id or ""):
                print(f"tracking: marked KILLED {len(closed)} run(s) left RUNNING by ended processes: "
                      + ", ".join(closed))
            _Offline.reason, _Offline.skipped = None, collections.Counter()
        run = mlflow.start_run(run_id=resume_run_id, run_name=None if resume_run_id else run_name or stage,
                               nested=nested, tags=all_tags)
    except MlflowException as err:
        raise TrackingError(f"{uri}: cannot start the MLflow run ({_first_line(err)})") from None
    still_running = (f"its run {run.info.run_id} stays RUNNING there (the next stage run on this "
                     "machine closes it)")
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm) if not nested else None
    try:
        if params:
            mlflow.log_params(flatten(params))
        yield run
    except BaseException as err:
        reason = _Offline.reason = _Offline.reason or _gone(err)
        if reason is None:
            trace = "".join(traceback.format_exception(err))[-4000:]
            try_log("failure reason", mlflow.set_tags, {"error": _failure_reason(err),
                    "mlflow.note.content": f"**Failed:** {_failure_reason(err)}\n\n```\n{trace}\n```"})
        _end_run("FAILED")
        if reason is None or not isinstance(err, (MlflowException, requests.RequestException)):
            raise
        raise TrackingError(f"tracking server {uri} went away during stage {stage} ({reason}); the "
                            f"stage stopped, keeping what it had written; {still_running}") from None
    else:
        _end_run("FINISHED")
        if _Offline.reason is not None:
            lost = ", ".join(f"{what} (x{n})" if n > 1 else what for what, n in _Offline.skipped.items())
            print(f"warning: tracking server {uri} went away during stage {stage} ({_Offline.reason}); "
                  f"outputs saved, not logged: {lost}; {still_running}", file=sys.stderr)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
