"""MLflow tracking faults: unreachable or dying server, unusable mlflow.db, runs left RUNNING by
killed stages, failures without a reason, and git_dirty counting the pipeline's own outputs."""
import os
import signal
import subprocess
import sys
import textwrap
from unittest import mock

import mlflow
import pytest

from conftest import ROOT
from ferpipe.pipeline.lineage import git_state
from ferpipe.pipeline.tracking import TrackingError, stage_run, use_tracking

DEAD_URI = "http://127.0.0.1:9"  # the discard port: nothing listens there


def runs(uri: str, **filters: str):
    """All runs of the project's experiment in the store at `uri`, with the given tags."""
    mlflow.set_tracking_uri(uri)
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in filters.items())
    return mlflow.search_runs(experiment_names=["fer-pipeline"], filter_string=query,
                              output_format="list")


@pytest.mark.proc
def test_unreachable_server_stops_prepare_with_one_line_before_reading_data(tmp_path):
    from ferpipe.pipeline.tiny import make_archive

    make_archive(tmp_path / "in.zip", ["happy", "sad"], per_class=2)
    (tmp_path / "params.yaml").write_text("prepare:\n  sources: {a: {source: in.zip}}\n")
    proc = subprocess.run([sys.executable, str(ROOT / "stages/prepare.py")], cwd=tmp_path, text=True,
                          capture_output=True, env={**os.environ, "MLFLOW_TRACKING_URI": DEAD_URI},
                          timeout=600)  # a hang guard only: before the fix this took 4 minutes
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [  # the tracker, not the missing data: checked first
        f"error: tracking server {DEAD_URI} is unreachable (Connection refused); start it, fix "
        "MLFLOW_TRACKING_URI, or unset it to use the local mlflow.db"]


def test_http_retry_defaults_yield_to_the_users_environment():
    with mock.patch.dict(os.environ, {"MLFLOW_HTTP_REQUEST_TIMEOUT": "300"}):
        os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        with pytest.raises(TrackingError, match="unreachable"):
            use_tracking(DEAD_URI)
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"  # a slow server's setting stays
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"  # MLflow's 7 took 4 minutes


def test_corrupt_or_unwritable_tracking_db_is_one_line_naming_it(tmp_path):
    corrupt = tmp_path / "mlflow.db"
    corrupt.write_bytes(b"not a database" * 300)
    with pytest.raises(TrackingError) as err:
        use_tracking(f"sqlite:///{corrupt}")
    assert str(err.value).startswith(f"{corrupt}: cannot use it as the MLflow tracking store (")
    assert "file is not a database" in str(err.value) and "\n" not in str(err.value)

    folder = tmp_path / "folder.db"
    folder.mkdir()  # MLflow alone retries this for minutes, then prints a traceback
    with pytest.raises(TrackingError, match=f"^{folder}: the MLflow tracking database is a folder"):
        use_tracking(f"sqlite:///{folder}")
    if os.geteuid() != 0:  # root may write anything
        read_only = tmp_path / "ro.db"
        use_tracking(f"sqlite:///{read_only}")
        read_only.chmod(0o444)
        with pytest.raises(TrackingError, match=f"^{read_only}: the MLflow tracking database is not writ"):
            use_tracking(f"sqlite:///{read_only}")


SERVER_DIES = """
    import logging, os, signal, sys
    from pathlib import Path
    os.environ["_MLFLOW_SERVER_FILE_STORE"] = "sqlite:///server.db"
    os.environ["_MLFLOW_SERVER_ARTIFACT_ROOT"] = str(Path("artifacts").resolve())
    from mlflow.server import app
    from werkzeug.serving import make_server
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = make_server("127.0.0.1", 0, app)
    server_pid = os.fork()  # a real MLflow server, quicker to start than `mlflow server`
    if server_pid == 0:
        signal.alarm(600)  # never outlives a test that failed before killing it
        server.serve_forever()
    server.socket.close()
    os.environ["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{server.server_port}"
    import mlflow
    from ferpipe.pipeline.config import run_main
    from ferpipe.pipeline.tracking import stage_run, try_log

    def main():
        with stage_run("train_baselines", {"epochs": 3}, "data", run_name="m", tags={"model_name": "m"}):
            try_log("epoch metrics", mlflow.log_metrics, {"loss": 1.0}, step=1)
            os.kill(server_pid, signal.SIGKILL)  # the server dies during training
            os.waitpid(server_pid, 0)
            for epoch in (2, 3):
                try_log("epoch metrics", mlflow.log_metrics, {"loss": 1.0 / epoch}, step=epoch)
            Path("model.keras").write_text("trained")  # outputs are saved before the model is logged
            try_log("model", mlflow.log_text, "weights", "model.txt")
            if sys.argv[1:] == ["direct"]:
                mlflow.log_metric("final", 1.0)  # a stage that needs the server for its job
        print("stage done")

    run_main(main)
"""


@pytest.mark.proc
@pytest.mark.parametrize("mode", ["try_log", "direct"])
def test_server_dying_mid_stage_keeps_outputs_and_says_what_was_not_logged(tmp_path, mode):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(SERVER_DIES), mode], cwd=tmp_path,
                          text=True, capture_output=True, timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (tmp_path / "model.keras").read_text() == "trained"  # the finished training is kept
    messages = [line for line in proc.stderr.splitlines() if line.startswith(("warning:", "error:"))]
    uri = messages[0].split()[3]
    assert messages[0] == (f"warning: tracking server {uri} went away (Connection refused); "
                           "going on without logging")
    [run] = runs(f"sqlite:///{tmp_path / 'server.db'}", model_name="m")
    still = f"its run {run.info.run_id} stays RUNNING there (the next stage run on this machine closes it)"
    if mode == "try_log":  # every output written, only logging lost: DVC may record the stage
        assert proc.returncode == 0 and "stage done" in proc.stdout
        assert messages[1:] == [
            f"warning: tracking server {uri} went away during stage train_baselines (Connection "
            f"refused); outputs saved, not logged: epoch metrics (x2), model; {still}"]
    else:  # a stage whose own MLflow call failed did not finish its job
        assert proc.returncode == 1 and "stage done" not in proc.stdout
        assert messages[1:] == [
            f"error: tracking server {uri} went away during stage train_baselines (Connection "
            f"refused); the stage stopped, keeping what it had written; {still}"]
    # what reached the server before it died is there; the run could not be ended
    assert run.info.status == "RUNNING" and run.data.metrics == {"loss": 1.0}


KILLED_STAGE = """
    import os, signal, sys
    from ferpipe.pipeline.tracking import stage_run
    with stage_run("train_baselines", {}, "data", run_name="m", tags={"model_name": "m"}):
        if sys.argv[1] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)  # what the out-of-memory killer does
        print("running", flush=True)
        sys.stdin.read()  # a live stage (a tuning chief, say) until the test lets it finish
"""


@pytest.mark.proc
def test_rerun_marks_a_killed_stages_run_killed_and_leaves_live_ones(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def start(mode: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_STAGE), mode], cwd=tmp_path,
                                env={**os.environ, "MLFLOW_TRACKING_URI": uri}, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    live = start("live")  # started first: else it would close the killed stage's run itself
    try:
        if (ready := live.stdout.readline()) != "running\n":
            live.kill()
            pytest.fail(ready + live.communicate()[1][-3000:])
        killed = start("kill")
        assert killed.wait(timeout=600) == -signal.SIGKILL, killed.communicate()[1][-3000:]
        assert [r.info.status for r in runs(uri, model_name="m")] == ["RUNNING", "RUNNING"]

        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with stage_run("train_baselines", {}, "data", run_name="m", tags={"model_name": "m"}) as rerun:
            pass
    finally:
        live.communicate("", timeout=600)  # lets the live stage finish
    others = {r.info.run_id: r for r in runs(uri, model_name="m")}
    assert others.pop(rerun.info.run_id).info.status == "FINISHED"
    by_status = {r.info.status: r for r in others.values()}
    assert sorted(by_status) == ["FINISHED", "KILLED"]  # the live stage ended as usual
    dead = by_status["KILLED"]
    assert dead.data.tags["error"].startswith(f"its process (pid {killed.pid} on ")
    assert dead.data.tags["error"].endswith("ended without ending the run: killed (kill -9, out of "
                                            "memory) or its tracking server was unreachable")
    assert dead.data.tags["mlflow.note.content"].startswith("**Killed:** its process")
    printed = capsys.readouterr().out
    assert f"tracking: marked KILLED 1 run(s) left RUNNING by ended processes: {dead.info.run_id}" in printed


def test_failed_run_carries_the_reason(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(FileNotFoundError), stage_run("prepare", {"seed": 1}, "data/raw/x.zip"):
        raise FileNotFoundError("data/raw/x.zip: input data not found")
    [run] = runs(uri, stage="prepare")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "FileNotFoundError: data/raw/x.zip: input data not found"
    note = run.data.tags["mlflow.note.content"]  # the run's description in the MLflow UI
    assert note.startswith("**Failed:** FileNotFoundError: data/raw/x.zip") and "Traceback" in note


DVC_YAML = """
stages:
  train:
    foreach: [a, b]
    do:
      cmd: python train.py ${item}
      outs:
        - models/trained/${item}/model.keras
        - metrics/train/${item}.json:
            cache: false
  release:
    cmd: python release.py
    outs:
      - models/release:
          cache: false
plots:
  - plots/train:
      x: epoch
"""


@pytest.mark.proc
def test_git_dirty_ignores_what_the_pipeline_writes(tmp_path, monkeypatch):
    files = {"dvc.yaml": DVC_YAML, "dvc.lock": "1", "src/code.py": "1", "metrics/train/a.json": "1",
             "models/release/MODEL_CARD.md": "1", "plots/train/a.csv": "1"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "."], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    for name in files:
        if name not in ("dvc.yaml", "src/code.py"):
            (tmp_path / name).write_text("rewritten by a stage")
    assert git_state()[1] is False
    (tmp_path / "src/code.py").write_text("2")
    assert git_state()[1] is True
