"""MLflow runs left RUNNING by processes that ended (kill -9, the out-of-memory killer, a
tracking server gone when the stage ended): which process owns a run, and closing the orphans.

A run is closed only when its owner provably ended: same machine and pid namespace, and that
pid is gone or now names a process started at another time. Runs of live processes (a tuning
chief and its workers) and runs made on other machines are never touched.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import mlflow
import psutil

PROCESS_TAG = "ferpipe.process"  # host|pid namespace|pid|start time of the process owning a run


def process_key(pid: int) -> str | None:
    """`host|pid namespace|pid|start time` of process `pid`, None once it has ended; namespace
    and start time tell a reused pid, or another container's, from the owner."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:  # it has ended; only its parent has not looked
            return None
        namespace = os.readlink("/proc/self/ns/pid") if Path("/proc/self/ns/pid").exists() else "-"
        return f"{socket.gethostname()}|{namespace}|{pid}|{process.create_time():.2f}"
    except (psutil.Error, OSError):
        return None


def _orphaned(key: str | None) -> bool:
    """Whether `key` names a process of this machine (and pid namespace) that has ended."""
    here, parts = process_key(os.getpid()), (key or "").split("|")
    return bool(here) and len(parts) == 4 and parts[:2] == here.split("|")[:2] \
        and parts[2].isdigit() and process_key(int(parts[2])) != key


def close_runs(runs: list, reason: str) -> None:
    """End `runs` KILLED, with `reason` in their `error` tag and note (shown in the MLflow UI)."""
    client = mlflow.MlflowClient()
    for run in runs:
        client.set_tag(run.info.run_id, "error", reason)
        client.set_tag(run.info.run_id, "mlflow.note.content", f"**Killed:** {reason}")
        client.set_terminated(run.info.run_id, status="KILLED")


def close_orphaned_runs(experiment_id: str, keep: str = "") -> list[str]:
    """Close the RUNNING runs whose process on this machine has ended, and their RUNNING
    children; returns their ids. Live processes' runs (a tuning chief's, its workers') stay."""
    running = mlflow.MlflowClient().search_runs([experiment_id], "attributes.status = 'RUNNING'",
                                                max_results=1000)
    closed = []
    for run in running:
        key = run.data.tags.get(PROCESS_TAG)
        if run.info.run_id != keep and _orphaned(key):
            host, _, pid, _ = key.split("|")
            close_runs([run], f"its process (pid {pid} on {host}) ended without ending the run: "
                              "killed (kill -9, out of memory) or its tracking server was unreachable")
            close_runs([r for r in running if r.data.tags.get("mlflow.parentRunId") == run.info.run_id],
                       f"its parent run {run.info.run_id} was left RUNNING by an ended process")
            closed.append(run.info.run_id)
    return closed
