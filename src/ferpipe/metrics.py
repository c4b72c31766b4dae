"""Classification metrics of predicted class indices: the one function `ferpipe score`, the
evaluate stage and the fine-tune all use (NumPy only, so the core needs no scikit-learn).
The formulas are scikit-learn's with zero_division=0."""
from __future__ import annotations

import numpy as np


def classification_metrics(y: np.ndarray, pred: np.ndarray, classes: list[str],
                           macro_over_present: bool = False) -> dict:
    """{images, accuracy, macro_f1, per_class: {class: precision, recall, f1, support},
    confusion: rows true, columns predicted}. macro_f1 averages every class, or with
    `macro_over_present` only the classes present in `y` (a folder of some classes only)."""
    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)
    k = len(classes)
    confusion = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
    averaged = np.flatnonzero(support > 0) if macro_over_present else np.arange(k)
    return {"images": int(len(y)), "accuracy": float(tp.sum() / len(y)) if len(y) else 0.0,
            "macro_f1": float(f1[averaged].mean()) if len(averaged) else 0.0,
            "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]),
                              "f1": float(f1[i]), "support": int(support[i])} for i, c in enumerate(classes)},
            "confusion": {"rows_true_columns_predicted": list(classes), "matrix": confusion.tolist()}}


def report_text(m: dict) -> str:
    """`classification_metrics` as a table: accuracy and macro-F1, per-class precision, recall,
    F1 and support, then the confusion matrix (what `ferpipe score` prints and evaluate logs)."""
    classes = m["confusion"]["rows_true_columns_predicted"]
    width = max(10, *(len(c) + 2 for c in classes))
    lines = [f"accuracy {m['accuracy']:.4f}   macro-F1 {m['macro_f1']:.4f}", "",
             f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for c, v in m["per_class"].items():
        lines.append(f"{c:<{width}}{v['precision']:>10.3f}{v['recall']:>10.3f}{v['f1']:>10.3f}{v['support']:>10d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * width + "".join(f"{c:>{width}}" for c in classes)]
    for c, row in zip(classes, m["confusion"]["matrix"]):
        lines.append(f"{c:<{width}}" + "".join(f"{v:>{width}d}" for v in row))
    return "\n".join(lines)
