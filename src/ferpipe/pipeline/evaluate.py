"""Stage `evaluate`: score every trained model on val and test; choose the champion on val."""
from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import log_loss

from ferpipe.pipeline.config import PipelineError
from ferpipe.pipeline.models import predict_probs
from ferpipe.pipeline.params import EvaluateConfig

# Selection metrics and whether larger is better.
SELECTION = {"val_accuracy": True, "val_macro_f1": True, "val_log_loss": False}


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE: |accuracy - confidence| averaged over equal-width confidence bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def single_image_latency_ms(model: keras.Model, image: np.ndarray, calls: int) -> float:
    """Mean wall time of one-image calls to a compiled function, after warm-up."""
    infer = tf.function(lambda batch: model(batch, training=False))
    batch = tf.constant(image[None, ..., None], tf.float32)
    for _ in range(10):
        infer(batch).numpy()
    start = time.perf_counter()
    for _ in range(calls):
        infer(batch).numpy()
    return (time.perf_counter() - start) / calls * 1000.0


def split_metrics(probs: np.ndarray, y: np.ndarray, classes: list[str], ece_bins: int) -> dict:
    from ferpipe.metrics import classification_metrics

    labels = list(range(len(classes)))
    clipped = np.clip(probs, 1e-7, 1.0)
    m = classification_metrics(y, probs.argmax(axis=1), classes)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            # float32 softmax sums drift from 1 by ~1e-7, which scikit-learn warns about per call
            "log_loss": float(log_loss(y, clipped / clipped.sum(axis=1, keepdims=True), labels=labels)),
            "ece": expected_calibration_error(probs, y, ece_bins),
            # "f1-score": the key metrics/evaluate.json has always had (dvc metrics diff compares it)
            "per_class": {c: {"precision": v["precision"], "recall": v["recall"], "f1-score": v["f1"]}
                          for c, v in m["per_class"].items()}}


Splits = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # source -> split -> (x, y)
METRIC_KEYS = ("accuracy", "macro_f1", "log_loss", "ece")


def evaluate_model(path: Path, sources: Splits, classes: list[str],
                   cfg: EvaluateConfig) -> dict[str, dict]:
    """All figures for one saved model under each test-time variant in `cfg.tta`, keyed by
    candidate name (`vgg_bn`, `vgg_bn+flip`): per source and split (`result[source][split]`),
    the mean over sources (`result[split]`), and predictions for the confusion plots."""
    from ferpipe.pipeline.models import with_flip_tta

    base = keras.models.load_model(path)
    candidates = {}
    for tta in cfg.tta:
        model = base if tta == "none" else with_flip_tta(base)
        result: dict = {"model": path.parent.name, "tta": tta, "sources": {}, "pred": {}}
        for source, splits in sources.items():
            result["sources"][source] = {}
            for split, (x, y) in splits.items():
                probs = predict_probs(model, x, cfg.batch_size)
                result["sources"][source][split] = split_metrics(probs, y, classes, cfg.ece_bins)
                result["pred"][f"{source}/{split}"] = probs.argmax(axis=1)
        for split in ("val", "test"):  # every source weighs the same
            result[split] = {k: float(np.mean([s[split][k] for s in result["sources"].values()]))
                             for k in METRIC_KEYS}
        first = next(iter(sources.values()))["test"][0][0]
        result["latency_ms"] = single_image_latency_ms(model, first, cfg.latency_calls)
        result["params"] = int(base.count_params())
        result["file_bytes"] = path.stat().st_size
        candidates[candidate_name(path.parent.name, tta)] = result
    return candidates


def candidate_name(model: str, tta: str) -> str:
    return model if tta == "none" else f"{model}+{tta}"


def load_candidate(models_dir: Path, model: str, tta: str) -> keras.Model:
    """A trained model as evaluated: with its test-time variant built in as layers."""
    from ferpipe.pipeline.models import with_flip_tta

    base = keras.models.load_model(Path(models_dir) / model / "model.keras")
    return with_flip_tta(base) if tta == "flip" else base


def flat_row(name: str, result: dict) -> dict:
    """One row of the comparison table: reproducible numbers only (latency is in the timing report)."""
    row = {"model": name, "tta": result["tta"]}
    for split in ("val", "test"):  # the mean over sources, then each source
        for key in METRIC_KEYS:
            row[f"{split}_{key}"] = round(result[split][key], 4)
    for source, splits in result["sources"].items():
        for split in ("val", "test"):
            for key in ("accuracy", "macro_f1"):
                row[f"{source}_{split}_{key}"] = round(splits[split][key], 4)
    row.update(params=result["params"], file_mb=round(result["file_bytes"] / 1e6, 2))
    return row


def trained_sources(train_metrics: dict) -> set[str]:
    """The sources a model was trained on: a fine-tune lists its mix under "drawn"; every other
    training stage reads FER2013 alone (its dvc.yaml deps: data/prepared/fer2013)."""
    return set(train_metrics.get("drawn") or {"fer2013": None})


def unseen_scores(rows: list[dict], trained_on: dict[str, set[str]], sources: list[str],
                  metric: str) -> dict[str, dict]:
    """How the models hold up on a kind of picture they were not trained on: for each source,
    among the candidates not trained on it, the one the champion criterion picks with that
    source left out (the mean validation `metric` over every other source, the same sources
    for every candidate), and its test scores there: the release the pipeline would make had
    it never seen that kind of picture."""
    out = {}
    sign = 1 if SELECTION[metric] else -1
    key = metric.removeprefix("val_")
    for source in sources:
        pool = [r for r in rows if source not in trained_on[r["model"].split("+")[0]]]
        others = [s for s in sources if s != source]
        if not pool or not others:
            continue
        best = max(pool, key=lambda r, others=others: (
            sign * float(np.mean([r[f"{s}_val_{key}"] for s in others])), -r["params"],
            r.get("tta", "none") == "none"))
        out[source] = {"model": best["model"], "test_accuracy": best[f"{source}_test_accuracy"],
                       "test_macro_f1": best[f"{source}_test_macro_f1"]}
    return out


def choose_champion(rows: list[dict], metric: str) -> str:
    """Best candidate by a validation metric. Never looks at test. Ties go to fewer parameters,
    then to no test-time augmentation: a variant that costs twice the compute must earn it."""
    if not metric.startswith("val_"):
        raise PipelineError(f"champion must be chosen on validation data, got '{metric}'")
    sign = 1 if SELECTION[metric] else -1
    return max(rows, key=lambda r: (sign * r[metric], -r["params"], r.get("tta", "none") == "none"))["model"]
