"""Params that must be refused, before TensorFlow loads, and what a new user sees (issue 11, 4-5)."""
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from ferpipe.pipeline.augment import AugmentConfig
from ferpipe.pipeline.config import ConfigError, load_entry, load_section
from ferpipe.pipeline.data import PrepareConfig
from ferpipe.pipeline.params import (
    CNNSpec,
    EvaluateConfig,
    FinetuneConfig,
    ReleaseConfig,
    TrainConfig,
    TransferSpec,
    TuneConfig,
    weights_file_facts,
)
from ferpipe.quiet import drop_below

V2_050 = "data/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"
V1_025 = "data/weights/mobilenet_2_5_224_tf_no_top.h5"
CNN = "baselines:\n  m:\n    filters: [8]\n"
TRANSFER = f"transfer:\n  m:\n    backbone: mobilenet_v2\n    alpha: 0.5\n    weights: {V2_050}\n"


def write_params(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def load(path: Path, text: str):
    """Load whatever `text` declares: a section, or the entry `m` of a model section."""
    first = text.split(":", 1)[0]
    entries = {"baselines": CNNSpec, "transfer": TransferSpec}
    if first in entries:
        return load_entry(first, "m", entries[first], path)
    sections = {"train": TrainConfig, "tune": TuneConfig, "evaluate": EvaluateConfig,
                "finetune": FinetuneConfig,
                "release": ReleaseConfig, "augment": AugmentConfig, "prepare": PrepareConfig}
    return load_section(first, sections[first], path)


# (params text, the key path the error names, the rule it states): the wording is pydantic's.
@pytest.mark.parametrize("text, key, rule", ids=lambda v: v if "\n" not in v else None, argvalues=[
    # Keras' "You must call compile()" before; a useless model and exit 0 before.
    (CNN + "    epochs: 0\n", "baselines.m.epochs", ">= 1"),
    (CNN + "    learning_rate: -0.01\n", "baselines.m.learning_rate", "> 0"),
    (CNN + "    kernel: 4\n", "baselines.m.kernel", "one of 1, 3, 5, 7"),
    (CNN + "    kernel: true\n", "baselines.m.kernel", "a number"),
    (CNN + "    block_dropout: 1.0\n", "baselines.m.block_dropout", "< 1"),
    (CNN + "    dense_dropout: .nan\n", "baselines.m.dense_dropout", "< 1"),
    ("baselines:\n  m:\n    filters: []\n", "baselines.m.filters", "at least 1 item"),
    ("baselines:\n  m:\n    filters: [8, -4]\n", "baselines.m.filters[1]", ">= 1"),
    # Silently Adam before, while MLflow logged rmsprop.
    ("tune:\n  space:\n    optimizer: [rmsprop]\n", "tune.space.optimizer[0]", "one of adam, adamw, sgd"),
    ("tune:\n  space:\n    dropout: [-0.1]\n", "tune.space.dropout[0]", ">= 0"),
    ("tune:\n  space:\n    depth: [9]\n", "tune.space", "unknown key 'depth'"),
    ("tune:\n  search_train_images: -5\n", "tune.search_train_images", ">= 0"),
    ("tune:\n  factor: 1\n", "tune.factor", ">= 2"),
    ("tune:\n  baseline: ''\n", "tune.baseline", "at least 1 character"),
    ("tune:\n  algorithm: grid\n", "tune.algorithm", "one of random, bayesian, hyperband"),
    ("train:\n  early_stopping_patience: -1\n", "train.early_stopping_patience", ">= 0"),
    ("train:\n  min_learning_rate: -0.00001\n", "train.min_learning_rate", ">= 0"),
    ("train:\n  weight_decay: -0.1\n", "train.weight_decay", ">= 0"),
    ("train:\n  reduce_lr_factor: 1\n", "train.reduce_lr_factor", "< 1"),
    ("train:\n  seed: -1\n", "train.seed", ">= 0"),
    ("train:\n  optimizer: rmsprop\n", "train.optimizer", "one of adam, adamw, sgd"),
    ("train:\n  min_learning_rate: 1e-5\n", "train.min_learning_rate", "YAML reads 1e-5 as text"),
    (TRANSFER + "    dropout: -0.2\n", "transfer.m.dropout", ">= 0"),
    (TRANSFER + "    head_epochs: -1\n", "transfer.m.head_epochs", ">= 0"),
    (TRANSFER + "    head_epochs: 0\n    finetune_epochs: 0\n", "transfer.m", "head_epochs + finetune_epochs must be >= 1"),
    (TRANSFER + "    backbone: resnet\n", "transfer.m.backbone", "one of mobilenet, mobilenet_v2"),
    # A Keras shape error naming neither key nor file before.
    (TRANSFER + "    alpha: 0.3\n", "transfer.m", "(made for alpha 0.5)"),
    (f"transfer:\n  m:\n    backbone: mobilenet\n    alpha: 0.5\n    weights: {V1_025}\n", "transfer.m",
     "(made for alpha 0.25)"),
    (f"transfer:\n  m:\n    backbone: mobilenet\n    alpha: 0.5\n    weights: {V2_050}\n", "transfer.m",
     "is for backbone mobilenet_v2, not mobilenet"),
    ("transfer:\n  m:\n    backbone: mobilenet_v2\n    alpha: 0.3\n    weights: imagenet\n", "transfer.m",
     "weights exist only for alpha [0.35, 0.5,"),
    ("augment:\n  rotation_deg: -5\n", "augment.rotation_deg", ">= 0"),
    ("augment:\n  shear: -0.3\n", "augment.shear", ">= 0"),
    ("augment:\n  preview_images: 0\n", "augment.preview_images", ">= 1"),
    ("evaluate:\n  ece_bins: 1\n", "evaluate.ece_bins", ">= 2"),
    # A held-out source must leave something to train on, and be one the fine-tune would use.
    ("finetune:\n  mix: {a: {}, b: {}}\n  held_out: [c]\n", "finetune", "'c' must be one of two"),
    ("finetune:\n  mix: {a: {}}\n  held_out: [a]\n", "finetune", "'a' must be one of two"),
    ("release:\n  max_megabytes: 0\n", "release.max_megabytes", "> 0"),
    ("prepare:\n  source: ''\n", "prepare", "source must name a zip archive or a folder"),
    ("prepare:\n  source: x.zip\n  classes: [happy, Happy]\n", "prepare", "distinct names"),
])
def test_bad_param_is_refused_naming_file_key_and_rule(tmp_path, text, key, rule):
    with pytest.raises(ConfigError) as err:
        load(write_params(tmp_path, text), text)
    message = str(err.value).replace(f"{tmp_path}/", "")
    assert message.startswith(f"params.yaml:{key}: "), message
    assert rule in message, message


@pytest.mark.parametrize("text", ids=lambda text: text.strip().splitlines()[-1].strip(), argvalues=[
    CNN + "    epochs: 1\n    learning_rate: 1\n    kernel: 3.0\n",
    TRANSFER + "    head_epochs: 0\n",
    "transfer:\n  m:\n    backbone: mobilenet_v2\n    alpha: 0.3\n    weights: none\n",
    f"transfer:\n  m:\n    backbone: mobilenet\n    alpha: 0.25\n    weights: {V1_025}\n",
    "tune:\n  space:\n    optimizer: []\n",  # the baseline's own optimizer is always tried
    "train:\n  min_learning_rate: 1.0e-5\n",
])
def test_edge_values_are_accepted(tmp_path, text):
    load(write_params(tmp_path, text), text)


def test_the_official_weights_file_names_are_read():
    assert weights_file_facts(V2_050) == ("mobilenet_v2", 0.5, False)
    assert weights_file_facts(V1_025) == ("mobilenet", 0.25, False)
    assert weights_file_facts("mobilenet_7_5_224_tf.h5") == ("mobilenet", 0.75, True)
    assert weights_file_facts("my_weights.h5") is None


def test_backbone_names_are_those_the_builder_knows():
    from ferpipe.pipeline.models import BACKBONES  # imports TensorFlow
    from ferpipe.pipeline.params import BACKBONE_NAMES

    assert sorted(BACKBONE_NAMES) == sorted(BACKBONES)


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    path = write_params(tmp_path, "train:\n  batch_size: 64\n  seed: [42\n")
    with pytest.raises(ConfigError, match=r"params.yaml: invalid YAML at line 4, column 1: "):
        load_section("train", TrainConfig, path)


BAD_PARAMS = {  # one wrong value for each stage's own section
    "prepare.py": "prepare:\n  sources: {a: {source: ''}}\n",
    "augment.py": "augment:\n  shear: -1\n",
    "train_baseline.py": "baselines:\n  m: {filters: [8], epochs: 0}\n",
    "transfer.py": f"transfer:\n  m: {{backbone: mobilenet_v2, alpha: 0.3, weights: {V2_050}}}\n",
    "tune.py": "tune:\n  space: {optimizer: [rmsprop]}\n",
    "evaluate.py": "evaluate:\n  ece_bins: 0\n",
    "release.py": "release:\n  sample_images: -1\n",
}
# Runs a stage script as `python stages/x.py m` would, then says what it had imported.
RUN_STAGE = """
import runpy, sys
sys.argv = [sys.argv[1], "m"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print(sorted(m for m in ("tensorflow", "keras", "mlflow") if m in sys.modules))
"""


@pytest.mark.proc
@pytest.mark.parametrize("script", sorted(BAD_PARAMS))
def test_stage_refuses_bad_params_before_loading_tensorflow_or_mlflow(tmp_path, script):
    write_params(tmp_path, BAD_PARAMS[script])
    proc = subprocess.run([sys.executable, "-c", RUN_STAGE, str(ROOT / "stages" / script)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: params.yaml:"), proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"  # none of the slow imports happened


@pytest.mark.proc
def test_tiny_outside_a_project_says_where_to_run_it_and_leaves_no_dest(tmp_path):
    dest = tmp_path / "tiny"
    proc = subprocess.run([sys.executable, "-m", "ferpipe.pipeline.tiny", str(dest), "--source", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path}: not a ferpipe project (needs dvc.yaml, params.yaml and stages/): "
        "run this in the repo root, or pass --source REPO"]
    assert not dest.exists()


@pytest.mark.proc
def test_tiny_failing_half_way_removes_what_it_wrote(tmp_path):
    dest = tmp_path / "tiny"
    env = {**os.environ, "PATH": str(tmp_path)}  # no git: fails after copying the project
    proc = subprocess.run([sys.executable, "-m", "ferpipe.pipeline.tiny", str(dest), "--source", str(ROOT)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: [Errno 2] No such file or directory: 'git'"]
    assert not dest.exists()


@pytest.mark.proc
def test_tiny_refuses_a_dest_that_is_not_empty(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "-m", "ferpipe.pipeline.tiny", str(tmp_path), "--source", str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "already exists and is not an empty folder" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_tensorflow_startup_records_below_the_level_are_dropped():
    noise = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
             "I0000 00:00:1795774467.163606    9350 port.cc:153] oneDNN custom operations are on.\n"
             "I0000 00:00:1795774467.291681    9350 cpu_feature_guard.cc:227] This TensorFlow binary\n"
             "To enable the following instructions: AVX2 FMA, in other operations, rebuild\n"
             "E0000 00:00:1795774502.194235    9350 cuda_platform.cc:52] failed call to cuInit\n"
             "Traceback (most recent call last):\n")
    assert drop_below(noise, 2) == ("E0000 00:00:1795774502.194235    9350 cuda_platform.cc:52] failed "
                                    "call to cuInit\nTraceback (most recent call last):\n")
    assert drop_below(noise, 3) == ""  # the traceback belongs to the E record above it
    assert drop_below(noise, 0) == noise.split("\n", 1)[1]


NOISE = ["failed call to cuInit", "absl::InitializeLog", "oneDNN custom operations",
         "Could not find cuda drivers", "cpu_feature_guard", "`shuffle=True` was passed",
         "Failed to resolve installed pip version"]
FIT_AND_LOG = """
import numpy as np
from ferpipe.pipeline.train import make_dataset  # any ferpipe import comes before TensorFlow
import keras
model = keras.Sequential([keras.Input((2, 2, 1)), keras.layers.Flatten(),
                          keras.layers.Dense(2, activation="softmax")])
model.compile("adam", "categorical_crossentropy")
data = make_dataset(np.zeros((4, 2, 2, 1), "uint8"), np.array([0, 1, 0, 1]), 2, 2, shuffle_seed=0)
model.fit(data, epochs=1, verbose=0)
from mlflow.utils.environment import _mlflow_conda_env
_mlflow_conda_env(additional_pip_deps=["keras"])  # what mlflow.keras.log_model writes
print("fitted")
"""


@pytest.mark.proc
@pytest.mark.slow
def test_cpu_training_prints_no_startup_noise():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    proc = subprocess.run([sys.executable, "-c", FIT_AND_LOG], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and "fitted" in proc.stdout, proc.stderr[-3000:]
    if not Path("/proc/driver/nvidia/version").exists():  # a GPU machine may log its devices
        assert [line for line in NOISE if line in proc.stderr] == [], proc.stderr[-3000:]
    # The user's own setting wins: TensorFlow's start-up lines come back.
    proc = subprocess.run([sys.executable, "-c", "import ferpipe, tensorflow"], capture_output=True,
                          env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"}, text=True, timeout=600)
    assert proc.returncode == 0 and any(line in proc.stderr for line in NOISE), proc.stderr[-3000:]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_prepare_shows_a_progress_bar_in_a_terminal_only(tmp_path, monkeypatch, terminal):
    from ferpipe.pipeline.data import prepare
    from ferpipe.pipeline.tiny import make_archive

    archive = make_archive(tmp_path / "faces.zip", ["happy", "sad"], per_class=6, extra_classes=())
    stderr = FakeTerminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    prepare(PrepareConfig(source=str(archive), classes=["happy", "sad"], val_fraction=0.25,
                          test_fraction=0.25), tmp_path / "out", tmp_path / "data.json")
    if terminal:
        assert f"prepare: reading {archive}" in stderr.getvalue() and "12 images" in stderr.getvalue()
    else:  # logs and pipes stay clean
        assert stderr.getvalue() == ""
