"""Stage `tune`: Keras Tuner search over a CNN space; every trial is an MLflow child run.

Resumable (the tuner's project folder persists between runs) and distributable with
Keras Tuner's own chief/worker mode (KERASTUNER_TUNER_ID / _ORACLE_IP / _ORACLE_PORT).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import mlflow
from mlflow.tracking import MlflowClient

from ferpipe.pipeline.models import CNNSpec, build_cnn
from ferpipe.pipeline.params import SearchSpace, TuneConfig
from ferpipe.pipeline.train import Phase, TrainConfig, TrainData, fit


def _choice(hp: kt.HyperParameters, name: str, values: list, baseline):
    """A choice over `values` plus the baseline's own value, which is the default."""
    options = sorted({*values, baseline}) if not isinstance(baseline, str) else \
        [baseline, *[v for v in values if v != baseline]]
    return hp.Choice(name, options, default=baseline)


def spec_from_hp(hp: kt.HyperParameters, space: SearchSpace, base: CNNSpec, base_optimizer: str,
                 epochs: int) -> tuple[CNNSpec, str]:
    """Declare (or read) the trial's recipe on top of the baseline's spec; returns spec, optimizer."""
    dropout = _choice(hp, "dropout", space.dropout, base.dense_dropout)
    spec = base.model_copy(update=dict(
        epochs=epochs, dense_dropout=dropout,
        block_dropout=round(dropout / 2, 2) if base.block_dropout else 0.0,
        random_shift=_choice(hp, "random_shift", space.random_shift, base.random_shift),
        learning_rate=_choice(hp, "learning_rate", space.learning_rate, base.learning_rate)))
    return spec, _choice(hp, "optimizer", list(space.optimizer), base_optimizer)


class CNNHyperModel(kt.HyperModel):
    """Builds the baseline's CNN with a trial's recipe; fits it with the project's one trainer."""

    def __init__(self, cfg: TuneConfig, train_cfg: TrainConfig, base: CNNSpec, num_classes: int):
        super().__init__(name="fer_cnn")
        self.cfg, self.train_cfg, self.base, self.num_classes = cfg, train_cfg, base, num_classes

    def spec(self, hp, epochs: int) -> tuple[CNNSpec, str]:
        return spec_from_hp(hp, self.cfg.space, self.base, self.train_cfg.optimizer, epochs)

    def build(self, hp):
        keras.utils.set_random_seed(self.train_cfg.seed)  # each trial starts alike
        spec, _ = self.spec(hp, self.cfg.max_epochs)
        return build_cnn(spec, self.num_classes, name="tuned")

    def fit(self, hp, model, data: TrainData, epochs: int = 1, initial_epoch: int = 0,
            callbacks=None, **kwargs):
        spec, optimizer = self.spec(hp, epochs)
        cfg = self.train_cfg.model_copy(update={"optimizer": optimizer})
        phase = Phase.for_spec("search", spec, epochs=epochs - initial_epoch)
        result = fit(model, data, cfg, [phase], extra_callbacks=callbacks)
        return {"val_accuracy": result["val_accuracy"], "val_loss": result["val_loss"]}


class BaselineFirst:
    """Oracle mixin: the first trial is the space's defaults, i.e. the baseline's own recipe,
    so the search always measures what it has to beat."""

    def populate_space(self, trial_id):
        if not self.trials:
            values = self.hyperparameters.values
            self._tried_so_far.add(self._compute_values_hash(values))
            return {"status": kt.engine.trial.TrialStatus.RUNNING, "values": values}
        return super().populate_space(trial_id)


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
            # Under its own names: the per-epoch val_accuracy above would hide a step-0 value
            # behind the last epoch's in MLflow's "latest" columns, and the trial's score is the
            # kept epoch's, which the oracle ranks by.
            mlflow.log_metrics({f"trial_{k}": sum(r[k] for r in results) / len(results)
                                for k in results[0]})
            return results


ORACLES = {"random": kt.oracles.RandomSearchOracle, "bayesian": kt.oracles.BayesianOptimizationOracle}


def search_id(cfg: TuneConfig, train_cfg: TrainConfig, base: CNNSpec, data_version: str) -> str:
    """Names the tuner project: the same search settings resume, new ones start afresh."""
    key = cfg.model_dump()
    key.update(train=train_cfg.model_dump(), base=base.model_dump(), data=data_version)
    return "search_" + hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def make_tuner(cfg: TuneConfig, train_cfg: TrainConfig, base: CNNSpec, num_classes: int,
               directory: Path, project: str, parent_run_id: str) -> kt.Tuner:
    objective = kt.Objective(cfg.objective, "max" if cfg.objective == "val_accuracy" else "min")
    hypermodel = CNNHyperModel(cfg, train_cfg, base, num_classes)
    common = dict(directory=str(directory), project_name=project, overwrite=False)
    if cfg.algorithm == "hyperband":  # brackets decide its trials: no baseline-first guarantee
        tuner_cls = type("MLflowHyperband", (MLflowTrials, kt.Hyperband), {"parent_run_id": parent_run_id})
        return tuner_cls(hypermodel=hypermodel, objective=objective, max_epochs=cfg.max_epochs,
                         factor=cfg.factor, seed=cfg.seed, **common)
    oracle_cls = type(f"BaselineFirst{ORACLES[cfg.algorithm].__name__}",
                      (BaselineFirst, ORACLES[cfg.algorithm]), {})
    oracle = oracle_cls(objective=objective, max_trials=cfg.max_trials, seed=cfg.seed)
    tuner_cls = type("MLflowTuner", (MLflowTrials, kt.Tuner), {"parent_run_id": parent_run_id})
    return tuner_cls(oracle=oracle, hypermodel=hypermodel, **common)


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


# A lead of two standard errors of the difference of two independent accuracies on the
# validation faces. Trials are seen on the same faces, so the paired error is smaller and this
# bar is conservative, on purpose: a retrain costs the baseline's whole budget (about 90 min for
# vgg_bn), and short trials rank full runs poorly (README, "Does the tuner earn its place").
LEAD_Z = 2.0


def retrain_winner(summary: dict, objective: str, val_images: int) -> tuple[bool, str]:
    """Whether the search's winner earned a retrain: it beat the baseline's own trial by more
    than validation noise. Returns the decision and a one-line reason for the run's record."""
    best, base = summary["best_search_score"], summary["baseline_search_score"]
    if summary["winner_is_baseline"]:
        return False, "the winner is the baseline's own recipe"
    if base is None:
        return True, "the baseline's own recipe had no completed trial to compare with"
    if objective != "val_accuracy":
        return True, f"objective {objective}: no noise bound, the winner is retrained"
    noise = LEAD_Z * math.sqrt((best * (1 - best) + base * (1 - base)) / max(val_images, 1))
    lead = best - base
    verdict = "retrained" if lead > noise else "kept the baseline's recipe"
    return lead > noise, (f"winner leads the baseline's trial by {lead:.4f} on {val_images} faces; "
                          f"noise bar {noise:.4f} ({LEAD_Z:g} standard errors): {verdict}")


def recipe(hp: kt.HyperParameters) -> dict:
    """A trial's searched values, without Hyperband's own bookkeeping ("tuner/epochs", ...)."""
    return {k: v for k, v in hp.values.items() if not k.startswith("tuner/")}


def summarize(tuner: kt.Tuner) -> dict:
    trials = list(tuner.oracle.trials.values())
    done = [t for t in trials if t.status == "COMPLETED"]
    best = tuner.oracle.get_best_trials(1)[0]
    values = recipe(best.hyperparameters)
    defaults = tuner.oracle.hyperparameters.values
    baseline = [t for t in done if all(t.hyperparameters.values.get(k) == v for k, v in defaults.items())]
    return {"trials_total": len(trials), "trials_completed": len(done),
            "best_trial_id": best.trial_id, "best_search_score": float(best.score),
            "baseline_search_score": float(baseline[0].score) if baseline else None,
            "winner_is_baseline": all(values.get(k) == v for k, v in defaults.items()),
            "best_hyperparameters": values}


def finish_search(search: Any, summary: dict, cfg: TuneConfig, train_cfg: TrainConfig, base: CNNSpec,
                  project: str, val_images: int, num_classes: int, hparams_path: Path,
                  summary_path: Path) -> dict:
    """After the search: the tuned model and its files. The winner is retrained with the
    baseline's own budget (its epochs, the full set) if it beat the baseline's own trial by more
    than noise; else the baseline's recipe stays and its model is reused. Returns metrics/tune.json."""
    import shutil

    from ferpipe.files import write_json
    from ferpipe.pipeline.train import (
        AUGMENTED_DIR,
        PREPARED_DIR,
        load_train_data,
        output_paths,
        set_determinism,
        write_outputs,
    )

    retrain, reason = retrain_winner(summary, cfg.objective, val_images)
    chosen = search.get_best_hyperparameters(1)[0] if retrain else search.oracle.hyperparameters.copy()
    spec, optimizer = search.hypermodel.spec(chosen, base.epochs)
    baseline, tuned = output_paths(cfg.baseline), output_paths("tuned")
    mlflow.set_tag("winner_decision", reason)
    print(f"tune: {reason}")
    if not retrain and baseline["model_path"].exists():
        # Same spec, same train params, same seed: training is deterministic, so a retrain
        # would give these very bytes; reuse them instead of spending the baseline's budget.
        shutil.copyfile(baseline["model_path"], tuned["model_path"])
        metrics = {**json.loads(baseline["metrics_path"].read_text()), "model": "tuned"}
        write_json(tuned["metrics_path"], metrics)
        for key in ("history_path", "timing_path"):
            shutil.copyfile(baseline[key], tuned[key])
        mlflow.set_tag("retrained", f"no: {cfg.baseline}'s own recipe is kept, its model reused")
    else:
        set_determinism(train_cfg.seed, train_cfg.mixed_precision)
        model = build_cnn(spec, num_classes, name="tuned")
        data = load_train_data(AUGMENTED_DIR, PREPARED_DIR, train_cfg.max_train_images, train_cfg.seed)
        final_cfg = train_cfg.model_copy(update={"optimizer": optimizer})
        metrics = write_outputs(model, fit(model, data, final_cfg, [Phase.for_spec("final", spec)]),
                                "tuned", **tuned)
    # The tuned model's own recipe (the release's model card cites it), not always the winner's.
    write_json(hparams_path, {"search_id": project, "baseline": cfg.baseline, **recipe(chosen)})
    baseline_val = (json.loads(baseline["metrics_path"].read_text())["val_accuracy"]
                    if baseline["metrics_path"].exists() else None)
    result = {**{k: v for k, v in summary.items() if k != "best_hyperparameters"},
              "winner_retrained": retrain, "tuned_val_accuracy": metrics["val_accuracy"],
              "tuned_val_loss": metrics["val_loss"], "baseline_val_accuracy": baseline_val}
    write_json(summary_path, result)
    return result
