"""Code checks: params validation, stage error handling, atomic outputs, metric helpers."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from ferpipe.files import atomic_path, write_npz
from ferpipe.pipeline.config import ConfigError, load_entry, load_section
from ferpipe.pipeline.data import PrepareConfig
from ferpipe.pipeline.params import CNNSpec
from ferpipe.pipeline.tiny import TINY_PARAMS, merge


def write_params(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_real_params_file_is_valid():
    from ferpipe.pipeline.augment import AugmentConfig
    from ferpipe.pipeline.evaluate import EvaluateConfig
    from ferpipe.pipeline.release import ReleaseConfig
    from ferpipe.pipeline.train import TrainConfig
    from ferpipe.pipeline.tune import TuneConfig

    params = ROOT / "params.yaml"
    from ferpipe.pipeline.data import PrepareParams
    from ferpipe.pipeline.params import FinetuneConfig

    for section, cls in [("prepare", PrepareParams), ("augment", AugmentConfig), ("train", TrainConfig),
                         ("tune", TuneConfig), ("finetune", FinetuneConfig), ("evaluate", EvaluateConfig),
                         ("release", ReleaseConfig)]:
        load_section(section, cls, params)
    import yaml

    from ferpipe.pipeline.models import TransferSpec
    raw = yaml.safe_load(params.read_text())
    for name in raw["baselines"]:
        load_entry("baselines", name, CNNSpec, params)
    for name in raw["transfer"]:
        load_entry("transfer", name, TransferSpec, params)


def test_unknown_key_is_named(tmp_path):
    path = write_params(tmp_path, "prepare:\n  source: x.zip\n  seeed: 3\n")
    with pytest.raises(ConfigError, match=r"params.yaml:prepare: unknown key 'seeed'"):
        load_section("prepare", PrepareConfig, path)


@pytest.mark.parametrize("body, key, rule", [
    ("  image_px: big\n", "prepare.image_px", "valid integer"),
    ("  val_fraction: 0.9\n", "prepare.val_fraction", "< 0.5"),
    ("  classes: [happy]\n", "prepare", "classes must be 2 or more"),
    ("  skip_corrupt: 1\n", "prepare.skip_corrupt", "valid boolean"),  # 1 is not a yes
])
def test_bad_values_are_named(tmp_path, body, key, rule):
    path = write_params(tmp_path, "prepare:\n  source: x.zip\n" + body)
    with pytest.raises(ConfigError) as err:
        load_section("prepare", PrepareConfig, path)
    assert str(err.value).startswith(f"{path}:{key}: ") and rule in str(err.value)


def test_missing_model_entry_lists_known_ones(tmp_path):
    path = write_params(tmp_path, "baselines:\n  a: {filters: [8]}\n")
    with pytest.raises(ConfigError, match=r"no entry 'b' in section 'baselines' \(known: \['a'\]\)"):
        load_entry("baselines", "b", CNNSpec, path)


@pytest.mark.proc
def test_stage_exits_nonzero_with_one_line_error(tmp_path):
    write_params(tmp_path, "prepare:\n  sources: {a: {source: missing.zip}}\n  colour: gray\n")
    proc = subprocess.run([sys.executable, str(ROOT / "stages/prepare.py")], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: params.yaml:prepare: unknown key 'colour'") and "sources" in line


@pytest.mark.proc
def test_a_missing_source_is_reported_before_mlflow_starts(tmp_path):
    write_params(tmp_path, "prepare:\n  sources: {a: {source: missing.zip}}\n")
    proc = subprocess.run([sys.executable, str(ROOT / "stages/prepare.py")], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: missing.zip: source 'a' not found (run `dvc pull`?)"]
    assert not (tmp_path / "mlflow.db").exists()  # no run was started, so none is left FAILED


@pytest.mark.proc
def test_a_failing_stage_marks_its_mlflow_run_failed(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    write_params(tmp_path, "prepare:\n  sources: {a: {source: bad.zip}}\n")
    proc = subprocess.run([sys.executable, str(ROOT / "stages/prepare.py")], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "bad.zip: not a zip archive or a folder" in proc.stderr
    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["fer-pipeline"])
    assert list(runs.status) == ["FAILED"] and list(runs["tags.stage"]) == ["prepare"]


OPEN_TRACKING = """
import sys
from ferpipe.pipeline.tracking import use_tracking
use_tracking(sys.argv[1])
"""


@pytest.mark.proc
def test_processes_opening_a_new_tracking_db_at_once_all_succeed(tmp_path):
    # a tuning chief and its workers start together on a fresh mlflow.db
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_TRACKING, uri], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, next(e for e in errors if "Error" in e)[-2000:]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_npz_bytes_do_not_depend_on_time(tmp_path, monkeypatch):
    import time

    write_npz(tmp_path / "a.npz", x=np.arange(3))
    later = time.time() + 3600  # an hour on: zip timestamps would differ (2 s resolution)
    monkeypatch.setattr(time, "time", lambda: later)
    monkeypatch.setattr(time, "localtime", lambda secs=None: time.gmtime(later))
    write_npz(tmp_path / "b.npz", x=np.arange(3))
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_tiny_params_merge_replaces_model_sections():
    base = {"baselines": {"big": {"filters": [64]}}, "train": {"batch_size": 64, "seed": 1}}
    merged = merge(base, TINY_PARAMS)
    assert "big" not in merged["baselines"] and merged["train"]["seed"] == 1
    assert merged["train"]["batch_size"] == TINY_PARAMS["train"]["batch_size"]


def test_ece_and_champion_selection():
    from ferpipe.pipeline.evaluate import choose_champion, expected_calibration_error

    y = np.array([0, 1, 0, 1])
    confident_right = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(confident_right, y) == 0.0
    confident_wrong = confident_right[:, ::-1]
    assert expected_calibration_error(confident_wrong, y) == pytest.approx(1.0)
    rows = [{"model": "a", "val_accuracy": 0.8, "test_accuracy": 0.9, "params": 10, "val_log_loss": 0.5},
            {"model": "b", "val_accuracy": 0.85, "test_accuracy": 0.7, "params": 10, "val_log_loss": 0.6}]
    assert choose_champion(rows, "val_accuracy") == "b"
    assert choose_champion(rows, "val_log_loss") == "a"
    with pytest.raises(ValueError, match="validation"):
        choose_champion(rows, "test_accuracy")
    # A test-time variant is chosen only where it is better on validation, not on a tie.
    tied = [{"model": "b+flip", "tta": "flip", "val_accuracy": 0.85, "params": 10},
            {"model": "b", "tta": "none", "val_accuracy": 0.85, "params": 10}]
    assert choose_champion(tied, "val_accuracy") == "b"
    tied[0]["val_accuracy"] = 0.86
    assert choose_champion(tied, "val_accuracy") == "b+flip"


@pytest.mark.parametrize("best, base, winner_is_baseline, objective, retrained", [
    (0.4514, 0.4374, False, "val_accuracy", False),  # the mixup search's 1.4-point lead: noise
    (0.4900, 0.4374, False, "val_accuracy", True),   # 5 points on 1,934 faces: beyond noise
    (0.4374, 0.4374, True, "val_accuracy", False),   # the baseline's recipe won
    (0.4900, None, False, "val_accuracy", True),     # nothing to compare with: retrain
    (0.6000, 0.6100, False, "val_loss", True),       # no noise bound for a loss
])
def test_tuner_retrains_only_a_winner_beyond_noise(best, base, winner_is_baseline, objective, retrained):
    from ferpipe.pipeline.tune import retrain_winner
    summary = {"best_search_score": best, "baseline_search_score": base,
               "winner_is_baseline": winner_is_baseline}
    decision, reason = retrain_winner(summary, objective, val_images=1934)
    assert decision is retrained
    assert reason and "\n" not in reason
