"""The one trainer: every model in the project (baselines, transfer, tuned) fits here."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf

from ferpipe.files import (
    atomic_path,
    load_split,
    write_json,
)
from ferpipe.modelio import save_model
from ferpipe.pipeline.config import PipelineError
from ferpipe.pipeline.params import CNNSpec, TrainConfig
from ferpipe.pipeline.tracking import log_keras_model, stage_run, try_log, use_tracking

PREPARED_DIR = Path("data/prepared/fer2013")  # the baselines, transfer and tune train on FER2013
AUGMENTED_DIR = Path("data/augmented")


def output_paths(name: str) -> dict[str, Path]:
    """Where every trained model's outputs live; evaluate reads the same places."""
    return {"model_path": Path("models/trained") / name / "model.keras",
            "metrics_path": Path("metrics/train") / f"{name}.json",
            "history_path": Path("plots/train") / f"{name}.csv",
            "timing_path": Path("reports/timing") / f"{name}.json"}


@dataclass
class TrainData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    classes: list[str]


@dataclass
class Phase:
    """One `fit` call; `before` runs first (e.g. unfreezing a backbone)."""
    name: str
    epochs: int
    learning_rate: float
    before: Callable[[keras.Model], None] | None = None
    random_shift: float = 0.0  # online shifts of the training images, fraction of the side
    mixup_alpha: float = 0.0  # online mixup of the training batches (0: off)
    random_zoom: float = 0.0  # online zoom in and out by up to this fraction (0: off)
    degrade: float = 0.0  # each degradation kind's probability per image (pipeline/degrade.py; 0: off)
    ema_momentum: float | None = None  # Polyak averaging in this phase (None: train.ema_momentum)

    @classmethod
    def for_spec(cls, name: str, spec: CNNSpec, epochs: int | None = None) -> Phase:
        """The one phase of a hand-built CNN, with its whole recipe: the baseline, each tuner
        trial (`epochs` set to the trial's) and the tuned retrain all build it here."""
        return cls(name, spec.epochs if epochs is None else epochs, spec.learning_rate,
                   random_shift=spec.random_shift, mixup_alpha=spec.mixup_alpha)


def load_train_data(augmented_dir: Path | str, prepared_dir: Path | str, max_train_images: int = 0,
                    seed: int = 0) -> TrainData:
    x, y, classes = load_split(augmented_dir, "train")
    x_val, y_val, val_classes = load_split(prepared_dir, "val")
    if classes != val_classes:
        raise PipelineError(f"{augmented_dir}: classes {classes} differ from {prepared_dir}'s {val_classes}")
    if 0 < max_train_images < len(x):
        keep = np.sort(np.random.default_rng(seed).choice(len(x), max_train_images, replace=False))
        x, y = x[keep], y[keep]
    return TrainData(x[..., None], y, x_val[..., None], y_val, classes)


def set_determinism(seed: int, mixed_precision: bool = False) -> None:
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if mixed_precision else "float32")


def make_dataset(x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int,
                 shuffle_seed: int | None = None, mixup_alpha: float = 0.0,
                 random_shift: float = 0.0, random_zoom: float = 0.0,
                 degrade: float = 0.0) -> tf.data.Dataset:
    """uint8 pixels -> float32 0..255, labels one-hot (or soft targets [N, k] as given);
    shuffled each epoch when seeded.

    Optional online augmentation of training batches with built-in Keras layers: random shifts
    (`random_shift`, fraction of the side), then mixup (`mixup_alpha`). Those maps run
    sequentially: their seed generators are variables, and parallel calls would race on them.
    """
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(
        lambda a, b: (tf.cast(a, tf.float32),
                      tf.one_hot(b, num_classes) if y.ndim == 1 else tf.cast(b, tf.float32)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # The data layers run in float32 whatever the global policy: under mixed_bfloat16, MixUp's
    # float32 mixing weights met bf16 images and failed, and shifted pixels lost precision.
    if random_shift > 0:
        shift = keras.layers.RandomTranslation(random_shift, random_shift, fill_mode="nearest",
                                               seed=shuffle_seed, dtype="float32")
        ds = ds.map(lambda images, labels: (shift(images, training=True), labels))
    if random_zoom > 0:  # loose FER2013 crops and tight photo or detector crops alike
        zoom = keras.layers.RandomZoom(random_zoom, random_zoom, fill_mode="reflect",
                                       seed=shuffle_seed, dtype="float32")
        ds = ds.map(lambda images, labels: (zoom(images, training=True), labels))
    if degrade > 0:  # before mixup: each face is degraded, then faces are mixed
        from ferpipe.pipeline.degrade import degrade_batch

        seeds = tf.data.Dataset.random(seed=shuffle_seed or 0).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda batch, seed: (degrade_batch(batch[0], seed, degrade), batch[1]))
    if mixup_alpha > 0:
        mixup = keras.layers.MixUp(alpha=mixup_alpha, seed=shuffle_seed, dtype="float32")

        def mix(images, labels):
            out = mixup({"images": images, "labels": labels}, training=True)
            return out["images"], out["labels"]
        ds = ds.map(mix)
    return ds.prefetch(tf.data.AUTOTUNE)


def balanced_class_weights(y: np.ndarray, num_classes: int) -> dict[int, float]:
    counts = np.bincount(y.argmax(axis=1) if y.ndim == 2 else y, minlength=num_classes)
    return {i: float(len(y) / (num_classes * max(c, 1))) for i, c in enumerate(counts)}


def uses_ema(cfg: TrainConfig, steps: int) -> bool:
    """EMA only where a phase runs >= 5 time constants: Keras' average starts at the initial
    weights with no warm-up, so in a short phase (a 1-epoch head, a tuner trial) it would keep
    a large share of them."""
    return cfg.ema_momentum > 0 and steps * (1 - cfg.ema_momentum) >= 5


def make_optimizer(cfg: TrainConfig, learning_rate: float,
                   ema: bool = False) -> keras.optimizers.Optimizer:
    """adam; adamw and sgd (Nesterov, momentum 0.9) with decoupled weight decay; optional EMA."""
    ema = {"use_ema": True, "ema_momentum": cfg.ema_momentum} if ema else {}
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=cfg.weight_decay, **ema)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True,
                                    weight_decay=cfg.weight_decay or None, **ema)
    return keras.optimizers.Adam(learning_rate, **ema)


class EpochLogger(keras.callbacks.Callback):
    """Per-epoch metrics (and learning rate) to MLflow and to a history list; times training."""

    def __init__(self, phase: str, history: list[dict], log_to_mlflow: bool = True):
        super().__init__()
        self.phase, self.history, self.log_to_mlflow = phase, history, log_to_mlflow
        self.train_seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_test_begin(self, logs=None):
        if hasattr(self, "_start"):
            self.train_seconds += time.perf_counter() - self._start
            del self._start

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": len(self.history) + 1, "phase": self.phase,
               "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
               **{k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"}}
        self.history.append(row)
        if self.log_to_mlflow and mlflow.active_run():  # a tracker gone mid-fit does not stop it
            try_log("epoch metrics", mlflow.log_metrics,
                    {k: v for k, v in row.items() if isinstance(v, float)}, step=row["epoch"])


def fit(model: keras.Model, data: TrainData, cfg: TrainConfig, phases: list[Phase],
        extra_callbacks: list | None = None, log_to_mlflow: bool = True) -> dict:
    """Train through `phases`; the best weights by `cfg.selection_metric` kept after each phase."""
    k = len(data.classes)
    val_ds = make_dataset(data.x_val, data.y_val, k, cfg.batch_size)
    weights = balanced_class_weights(data.y_train, k) if cfg.class_weights else None
    history: list[dict] = []
    verbose = 1 if sys.stdout.isatty() else 2  # a bar in a terminal, a line per epoch in logs
    train_seconds, start = 0.0, time.perf_counter()
    for phase in phases:
        if phase.epochs <= 0:
            continue
        if phase.before:
            phase.before(model)
        train_ds = make_dataset(data.x_train, data.y_train, k, cfg.batch_size, shuffle_seed=cfg.seed,
                                mixup_alpha=phase.mixup_alpha, random_shift=phase.random_shift,
                                random_zoom=phase.random_zoom, degrade=phase.degrade)
        phase_cfg = cfg if phase.ema_momentum is None else cfg.model_copy(
            update={"ema_momentum": phase.ema_momentum})
        ema = uses_ema(phase_cfg, phase.epochs * -(-len(data.x_train) // cfg.batch_size))
        model.compile(optimizer=make_optimizer(phase_cfg, phase.learning_rate, ema),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
                      metrics=["accuracy"])
        logger = EpochLogger(phase.name, history, log_to_mlflow)
        # With EMA, swapping first puts the averaged weights in the model for validation and for
        # every callback after it, so early stopping keeps (and restores) averaged weights.
        swap = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if ema else []
        callbacks = [
            *swap,
            keras.callbacks.EarlyStopping(cfg.selection_metric, patience=cfg.early_stopping_patience,
                                          restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau(cfg.selection_metric, factor=cfg.reduce_lr_factor,
                                              patience=cfg.reduce_lr_patience,
                                              min_lr=cfg.min_learning_rate),
            logger, *(extra_callbacks or [])]
        model.fit(train_ds, validation_data=val_ds, epochs=phase.epochs, class_weight=weights,
                  callbacks=callbacks, verbose=verbose)
        train_seconds += logger.train_seconds
    val_loss, val_acc = model.evaluate(val_ds, verbose=0)
    epochs_run = len(history)
    # The epoch early stopping kept: the best by the selection metric (lowest for a loss).
    sign = -1 if cfg.selection_metric.endswith("loss") else 1
    best = max(history, key=lambda r: sign * r.get(cfg.selection_metric, -sign * float("inf"))) if history else {}
    return {"history": history, "val_loss": float(val_loss), "val_accuracy": float(val_acc),
            "epochs_run": epochs_run, "best_epoch": int(best.get("epoch", 0)),
            "params": int(model.count_params()),
            "timing": {"wall_seconds": round(time.perf_counter() - start, 1),
                       "train_images_per_second":
                           round(epochs_run * len(data.x_train) / max(train_seconds, 1e-9), 1)}}


def plot_history(history: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key, ax in (("loss", ax_loss), ("accuracy", ax_acc)):
        ax.plot(epochs, [r[key] for r in history], label=f"train {key}")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], label=f"val {key}")
        ax.set_xlabel("epoch")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def write_outputs(model: keras.Model, result: dict, name: str, model_path: Path,
                  metrics_path: Path, history_path: Path, timing_path: Path) -> dict:
    """Save the model, its metrics JSON, history CSV and timings; log them to the active MLflow run.

    Timings live apart from the metrics: they change on every run, and `dvc metrics diff`
    should show only what the params changed."""
    import pandas as pd

    save_model(model, model_path)
    metrics = {k: v for k, v in result.items() if k not in ("history", "timing")}
    metrics["model_file_bytes"] = model_path.stat().st_size
    write_json(metrics_path, {"model": name, **metrics})
    write_json(timing_path, {"model": name, **result["timing"]})
    with atomic_path(history_path) as tmp:
        pd.DataFrame(result["history"]).to_csv(tmp, index=False, float_format="%.6g")
    if mlflow.active_run():  # after saving, and through try_log: a tracker gone loses no training
        try_log("final metrics", mlflow.log_metrics,
                {f"final_{k}": float(v) for k, v in {**metrics, **result["timing"]}.items()
                 if isinstance(v, int | float)})  # nested records (a fine-tune's mix) stay in the JSON
        curve = history_path.with_suffix(".png")
        plot_history(result["history"], curve, name)
        try_log("training curve", mlflow.log_artifact, str(curve))
        curve.unlink()
        try_log("model", log_keras_model, model, np.zeros((2, *model.input_shape[1:]), dtype=np.float32))
    return {**metrics, **result["timing"]}


def run_training_stage(stage: str, name: str, spec: object, cfg: TrainConfig,
                       build: Callable[[int], tuple[keras.Model, list[Phase]]]) -> dict:
    """Everything a training stage does: seed, load data, build, fit, save, log."""
    set_determinism(cfg.seed, cfg.mixed_precision)
    use_tracking()  # an unusable tracker is reported before the data is read
    data = load_train_data(AUGMENTED_DIR, PREPARED_DIR, cfg.max_train_images, cfg.seed)
    params = {"model_name": name, "model": spec.model_dump(), "train": cfg.model_dump()}
    with stage_run(stage, params, AUGMENTED_DIR, run_name=name, tags={"model_name": name}):
        model, phases = build(len(data.classes))
        result = fit(model, data, cfg, phases)
        return write_outputs(model, result, name, **output_paths(name))
