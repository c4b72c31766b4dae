"""The one way the per-source benches (weight interpolation, output averaging, prior
correction) record a setting: a JSON line under logs/ and a printed summary."""
from __future__ import annotations

import json
from pathlib import Path


def record(log: Path, label: str, scores: dict[str, dict[str, float]], **fields: object) -> None:
    """Append {**fields, mean_val_macro_f1, val: scores} to `log` and print `label` with the
    FER2013 and photo figures; scores are `split_scores` per source."""
    mean_f1 = sum(s["macro_f1"] for s in scores.values()) / len(scores)
    log.parent.mkdir(exist_ok=True)
    with log.open("a") as handle:
        handle.write(json.dumps({**fields, "mean_val_macro_f1": round(mean_f1, 4), "val": scores}) + "\n")
    fer, real = scores["fer2013"], scores["real"]
    print(f"{label}: mean F1 {mean_f1:.4f} | fer acc {fer['accuracy']:.4f} sad {fer['recall_sad']:.3f} "
          f"F1 {fer['macro_f1']:.4f} | real acc {real['accuracy']:.4f} neutral "
          f"{real['recall_neutral']:.3f} F1 {real['macro_f1']:.4f}", flush=True)
