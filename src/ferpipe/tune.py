"""Stage `tune`: Keras Tuner search over a CNN space; every trial is an MLflow child run.

Resumable (the tuner's project folder persists between runs) and distributable with
Keras Tuner's own chief/worker mode (KERASTUNER_TUNER_ID / _ORACLE_IP / _ORACLE_PORT).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import keras
import keras_tuner as kt
import mlflow
from mlflow.tracking import MlflowClient

from ferpipe.models import CNNSpec, build_cnn
from ferpipe.train import Phase, TrainConfig, TrainData, fit


@dataclass
class SearchSpace:
    depth: list[int] = field(default_factory=lambda: [3, 4])
    filters: list[int] = field(default_factory=lambda: [16, 32])  # first block; doubles per block
    kernel: list[int] = field(default_factory=lambda: [3])
    convs_per_block: list[int] = field(default_factory=lambda: [1, 2])
    batch_norm: list[bool] = field(default_factory=lambda: [True, False])
    dropout: list[float] = field(default_factory=lambda: [0.0, 0.5])  # [min, max], step 0.1
    dense_units: list[int] = field(default_factory=lambda: [128, 256])
    head: list[Literal["flatten", "gap"]] = field(default_factory=lambda: ["flatten", "gap"])
    learning_rate: list[float] = field(default_factory=lambda: [3e-4, 3e-3])  # [min, max], log
    optimizer: list[str] = field(default_factory=lambda: ["adam", "adamw", "sgd"])


@dataclass
class TuneConfig:
    algorithm: Literal["hyperband", "bayesian", "random"] = "hyperband"
    objective: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    max_trials: int = 10  # bayesian and random; hyperband sizes itself from max_epochs/factor
    max_epochs: int = 4  # per trial (hyperband: the most any trial gets)
    factor: int = 2
    search_train_images: int = 5000  # seeded subset of the augmented set used while searching
    final_epochs: int = 6  # retraining the best hyperparameters on the full set
    seed: int = 42
    space: SearchSpace = field(default_factory=SearchSpace)

    def validate(self) -> None:
        if self.max_epochs < 1 or self.max_trials < 1 or self.final_epochs < 1:
            raise ValueError("max_epochs, max_trials and final_epochs must be >= 1")
        if self.factor < 2:
            raise ValueError(f"factor must be >= 2, got {self.factor}")
        for name in ("dropout", "learning_rate"):
            low, high = getattr(self.space, name)
            if not low <= high:
                raise ValueError(f"space.{name} must be [min, max], got {[low, high]}")


def spec_from_hp(hp: kt.HyperParameters, space: SearchSpace, epochs: int) -> tuple[CNNSpec, str]:
    """Declare (or read) the trial's hyperparameters; returns the CNN spec and optimizer."""
    depth = hp.Choice("depth", space.depth)
    base = hp.Choice("filters", space.filters)
    filters = [min(base * 2**i, 512) for i in range(depth)]  # VGG convention: width doubles
    dropout = hp.Float("dropout", *space.dropout, step=0.1)
    spec = CNNSpec(filters=filters, kernel=hp.Choice("kernel", space.kernel),
                   convs_per_block=hp.Choice("convs_per_block", space.convs_per_block),
                   batch_norm=hp.Boolean("batch_norm") if len(space.batch_norm) > 1 else space.batch_norm[0],
                   block_dropout=round(dropout / 2, 2), head=hp.Choice("head", space.head),
                   dense_units=[hp.Choice("dense_units", space.dense_units)], dense_dropout=dropout,
                   epochs=epochs,
                   learning_rate=hp.Float("learning_rate", *space.learning_rate, sampling="log"))
    return spec, hp.Choice("optimizer", space.optimizer)


class CNNHyperModel(kt.HyperModel):
    """Builds a CNN from hyperparameters; fits it with the project's one trainer."""

    def __init__(self, cfg: TuneConfig, train_cfg: TrainConfig, num_classes: int):
        super().__init__(name="fer_cnn")
        self.cfg, self.train_cfg, self.num_classes = cfg, train_cfg, num_classes

    def build(self, hp):
        keras.utils.set_random_seed(self.train_cfg.seed)  # each trial starts alike
        spec, _ = spec_from_hp(hp, self.cfg.space, self.cfg.max_epochs)
        return build_cnn(spec, self.num_classes, name="tuned")

    def fit(self, hp, model, data: TrainData, epochs: int = 1, initial_epoch: int = 0,
            callbacks=None, **kwargs):
        spec, optimizer = spec_from_hp(hp, self.cfg.space, epochs)
        cfg = dataclasses.replace(self.train_cfg, optimizer=optimizer)
        result = fit(model, data, cfg, [Phase("search", epochs - initial_epoch, spec.learning_rate)],
                     extra_callbacks=callbacks)
        return {"val_accuracy": result["val_accuracy"], "val_loss": result["val_loss"]}


class MLflowTrials:
    """Mixin for a Keras Tuner class: each trial runs inside an MLflow child run."""
    parent_run_id: str = ""

    def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
        """No TensorBoard callback is used; skip Keras Tuner's unconditional tensorboard import."""

    def run_trial(self, trial, *args, **kwargs):
        tags = {"stage": "tune", "trial_id": trial.trial_id,
                "tuner_id": os.environ.get("KERASTUNER_TUNER_ID", "tuner0")}
        # The parent's experiment, explicitly: a worker process has no experiment set.
        experiment_id = MlflowClient().get_run(self.parent_run_id).info.experiment_id
        with mlflow.start_run(run_name=f"trial_{trial.trial_id}", parent_run_id=self.parent_run_id,
                              experiment_id=experiment_id, nested=True, tags=tags):
            mlflow.log_params(trial.hyperparameters.values)
            results = super().run_trial(trial, *args, **kwargs)
            mlflow.log_metrics({k: sum(r[k] for r in results) / len(results) for k in results[0]})
            return results


ALGORITHMS = {"hyperband": kt.Hyperband, "bayesian": kt.BayesianOptimization,
              "random": kt.RandomSearch}


def search_id(cfg: TuneConfig, train_cfg: TrainConfig, data_version: str) -> str:
    """Names the tuner project: the same search settings resume, new ones start afresh."""
    key = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "final_epochs"}
    key.update(train=dataclasses.asdict(train_cfg), data=data_version)
    return "search_" + hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def make_tuner(cfg: TuneConfig, train_cfg: TrainConfig, num_classes: int, directory: Path,
               project: str, parent_run_id: str) -> kt.Tuner:
    base = ALGORITHMS[cfg.algorithm]
    tuner_cls = type(f"MLflow{base.__name__}", (MLflowTrials, base), {"parent_run_id": parent_run_id})
    direction = "max" if cfg.objective == "val_accuracy" else "min"
    common = dict(hypermodel=CNNHyperModel(cfg, train_cfg, num_classes),
                  objective=kt.Objective(cfg.objective, direction), seed=cfg.seed,
                  directory=str(directory), project_name=project, overwrite=False)
    if cfg.algorithm == "hyperband":
        return tuner_cls(max_epochs=cfg.max_epochs, factor=cfg.factor, **common)
    return tuner_cls(max_trials=cfg.max_trials, **common)


def is_worker() -> bool:
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "")
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" not in tuner_id


def find_parent_run(project: str, unfinished_only: bool, wait_seconds: float = 0.0) -> str | None:
    """The MLflow parent run of search `project` (workers wait for the chief to make it)."""
    client, deadline = MlflowClient(), time.monotonic() + wait_seconds
    experiment = mlflow.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", "fer-pipeline"))
    while True:
        if experiment is not None:
            runs = client.search_runs([experiment.experiment_id],
                                      f"tags.search_id = '{project}' and tags.stage = 'tune'",
                                      order_by=["attributes.start_time DESC"], max_results=20)
            runs = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
            if unfinished_only:
                runs = [r for r in runs if r.info.status != "FINISHED"]
            if runs:
                return runs[0].info.run_id
        if time.monotonic() >= deadline:
            return None
        time.sleep(2)
        experiment = experiment or mlflow.get_experiment_by_name(
            os.environ.get("MLFLOW_EXPERIMENT_NAME", "fer-pipeline"))


def close_stale_trials(parent_run_id: str) -> int:
    """Trial runs left RUNNING by a killed search are marked KILLED before resuming."""
    client = MlflowClient()
    parent = client.get_run(parent_run_id)
    stale = client.search_runs([parent.info.experiment_id],
                               f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'")
    for run in stale:
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(stale)


def summarize(tuner: kt.Tuner) -> dict:
    trials = list(tuner.oracle.trials.values())
    done = [t for t in trials if t.status == "COMPLETED"]
    best = tuner.oracle.get_best_trials(1)[0]
    return {"trials_total": len(trials), "trials_completed": len(done),
            "best_trial_id": best.trial_id, "best_search_score": float(best.score),
            # Hyperband's own bookkeeping ("tuner/epochs", ...) is not a hyperparameter.
            "best_hyperparameters": {k: v for k, v in best.hyperparameters.values.items()
                                     if not k.startswith("tuner/")}}
