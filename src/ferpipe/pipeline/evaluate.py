"""Stage `evaluate`: score every trained model on val and test; choose the champion on val."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import confusion_matrix, log_loss

from ferpipe.explain import gradcam
from ferpipe.files import atomic_path, write_json
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
    the candidate chosen as the champion is (best mean validation `metric`, over the sources
    it was trained on) among those not trained on it, and its test scores there."""
    out = {}
    sign = 1 if SELECTION[metric] else -1
    key = metric.removeprefix("val_")
    for source in sources:
        pool = [r for r in rows if source not in trained_on[r["model"].split("+")[0]]]
        if not pool:
            continue
        def seen_mean(row: dict) -> float:
            seen = sorted(trained_on[row["model"].split("+")[0]] & set(sources))
            return float(np.mean([row[f"{s}_val_{key}"] for s in seen])) if seen else row[metric]
        best = max(pool, key=lambda r: (sign * seen_mean(r), -r["params"], r.get("tta", "none") == "none"))
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


def confusion_rows(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> list[dict]:
    return [{"actual": classes[a], "predicted": classes[p]} for a, p in zip(y, pred)]


def confusion_png(panels: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str], path: Path,
                  title: str) -> None:
    """One confusion matrix per source, side by side; `panels`: source -> (y, pred)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    for ax, (source, (y, pred)) in zip(axes[0], panels.items()):
        matrix = confusion_matrix(y, pred, labels=list(range(len(classes))))
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(classes)), classes, rotation=30)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if count > matrix.max() / 2 else "black")
        ax.set_title(f"{title}, {source}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def text_report(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> str:
    from ferpipe.metrics import classification_metrics, report_text

    return report_text(classification_metrics(y, pred, classes))


def write_reports(results: dict[str, dict], rows: list[dict], champion: str, cfg: EvaluateConfig,
                  classes: list[str], y_test: dict[str, np.ndarray], metrics_path: Path,
                  table_path: Path, plots_dir: Path, timing_path: Path,
                  trained_on: dict[str, set[str]]) -> dict:
    """metrics/evaluate.json, metrics/models.csv, per-model confusion data, accuracy bars, and the
    table and champion confusion PNGs; `rows` are the `flat_row`s of `results`."""
    import pandas as pd

    with atomic_path(table_path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    with atomic_path(plots_dir / "model_accuracy.csv") as tmp:
        pd.DataFrame([{"model": r["model"], "val_macro_f1": r["val_macro_f1"]} for r in rows]).to_csv(
            tmp, index=False)
    for name, result in results.items():
        for source, y in y_test.items():
            with atomic_path(plots_dir / "confusion" / source / f"{name}.csv") as tmp:
                pd.DataFrame(confusion_rows(y, result["pred"][f"{source}/test"], classes)).to_csv(
                    tmp, index=False)
    table_png(rows, champion, plots_dir / "models_table.png")
    confusion_png({s: (y, results[champion]["pred"][f"{s}/test"]) for s, y in y_test.items()},
                  classes, plots_dir / "champion_confusion.png", f"champion {champion}: test")
    best = results[champion]
    summary = {
        "champion": champion,
        "champion_model": best["model"],
        "champion_tta": best["tta"],
        "selection_metric": cfg.selection_metric,
        "selection": "mean over sources of each source's validation metric",
        "sources": best["sources"],
        "val": dict(best["val"]),
        "test": dict(best["test"]),
        # Each source as a kind of picture not trained on (see unseen_scores).
        "unseen": unseen_scores(rows, trained_on, list(y_test), cfg.selection_metric),
        "params": best["params"],
        "models": {r["model"]: {k: v for k, v in r.items() if k != "model"} for r in rows},
    }
    write_json(metrics_path, summary)
    # Wall-clock numbers change on every run; kept apart so `dvc metrics diff` shows only results.
    write_json(timing_path, {"champion": champion, "latency_ms_single_image": {
        name: round(result["latency_ms"], 3) for name, result in results.items()}})
    return summary


def table_png(rows: list[dict], champion: str, path: Path) -> None:
    """The comparison table as a picture, for the README; the champion's row is bold."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = sorted({k.split("_val_")[0] for k in rows[0] if "_val_" in k})
    columns = ["model", "val_macro_f1", *(f"{s}_val_accuracy" for s in sources),
               *(f"{s}_test_accuracy" for s in sources), "test_macro_f1", "params", "file_mb"]
    ordered = sorted(rows, key=lambda r: -r["val_macro_f1"])
    cells = [[f"{r[c]:,}" if c == "params" else str(r[c]) for c in columns] for r in ordered]
    fig, ax = plt.subplots(figsize=(14, 0.45 * len(rows) + 0.8))
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=columns, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8.5)
    table.scale(1, 1.4)
    for i, r in enumerate(ordered, start=1):
        if r["model"] == champion:
            for j in range(len(columns)):
                table[i, j].set_text_props(weight="bold")
    ax.set_title("Models on validation and test (macro-F1: mean over sources; sorted by it on "
                 "validation; champion in bold)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gradcam_grid(model: Any, x: np.ndarray, y: np.ndarray, classes: list[str], path: str | Path,
                 per_class: int = 4) -> Path:
    """PNG grid: a row per true class, its first `per_class` faces with the map overlaid and the
    predicted label and probability as title (green when right, red when wrong)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tensorflow as tf

    x, y = np.asarray(x), np.asarray(y)
    picks = [np.flatnonzero(y == k)[:per_class] for k in range(len(classes))]
    index = np.concatenate(picks).astype(int)
    if len(index) == 0:
        raise PipelineError("gradcam_grid: no faces to draw (x and y are empty or match no class)")
    probs = model(tf.constant(x[index, ..., None], tf.float32), training=False).numpy()
    maps = dict(zip(index.tolist(), gradcam(model, x[index])))
    fig, axes = plt.subplots(len(classes), per_class, figsize=(1.6 * per_class, 1.75 * len(classes)),
                             squeeze=False)
    row_of = {i: n for n, i in enumerate(index.tolist())}
    for k, rows in enumerate(picks):
        for j in range(per_class):
            ax = axes[k, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(classes[k], fontsize=9)
            if j >= len(rows):  # fewer faces of this class than columns
                ax.set_frame_on(False)
                continue
            i = int(rows[j])
            p = probs[row_of[i]]
            ax.imshow(x[i], cmap="gray", vmin=0, vmax=255)
            ax.imshow(maps[i], cmap="jet", alpha=0.4, vmin=0, vmax=1)
            ax.set_title(f"{classes[int(p.argmax())]} {p.max():.2f}", fontsize=8,
                         color="green" if int(p.argmax()) == k else "red")
    fig.suptitle("Grad-CAM on test faces (rows: true class; titles: predicted)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


