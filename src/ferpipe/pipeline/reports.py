"""The evaluate stage's written results: metrics/evaluate.json, the comparison table, the
per-model confusion data, and the PNGs (table, champion confusion, Grad-CAM grid)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from sklearn.metrics import confusion_matrix

from ferpipe.explain import gradcam
from ferpipe.files import atomic_path, write_json
from ferpipe.pipeline.config import PipelineError
from ferpipe.pipeline.evaluate import unseen_scores
from ferpipe.pipeline.params import EvaluateConfig


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


