"""What prepare's decoder changes: each source prepared with the code as it is now into a
scratch folder, against data/prepared (the bytes in dvc.lock), face by face (matched by name
through the manifests), and the validation scores of trained models on both versions of each
validation split (no retraining: what the pixels alone change for a model).

    nice uv run python bench/prepare_decoder.py [MODEL ...]   # default: finetuned tuned vgg_bn

Run it with data/prepared from a commit before the change (`dvc checkout data/prepared`).
Appends to logs/prepare_decoder.jsonl.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    from ferpipe.modelio import load_keras
    from ferpipe.pipeline.config import load_section
    from ferpipe.pipeline.data import prepare
    from ferpipe.pipeline.finetune import split_scores
    from ferpipe.pipeline.models import predict_probs
    from ferpipe.pipeline.params import PrepareParams

    params = load_section("prepare", PrepareParams)
    models = {name: load_keras(Path("models/trained") / name / "model.keras")
              for name in sys.argv[1:] or ["finetuned", "tuned", "vgg_bn"]}
    with tempfile.TemporaryDirectory() as tmp:
        for source in params.sources:
            new_dir, old_dir = Path(tmp) / source, Path("data/prepared") / source
            prepare(params.for_source(source), new_dir, Path(tmp) / f"{source}.json")
            old, new = (pd.read_csv(d / "manifest.csv") for d in (old_dir, new_dir))
            row = {"source": source, "faces": {"before": len(old), "after": len(new)},
                   "same_split": int(old.merge(new, on="source").pipe(
                       lambda m: (m.split_x == m.split_y).sum()))}
            row["pixels"] = pixel_change(old, new, old_dir, new_dir)
            for name, model in models.items():
                row[name] = {}
                for label, folder in (("before", old_dir), ("after", new_dir)):
                    with np.load(folder / "val.npz") as split:
                        x, y = split["x"], split["y"]
                    scores = split_scores(y, predict_probs(model, x, 256).argmax(1), list(params.classes))
                    row[name][label] = {k: round(scores[k], 4) for k in ("accuracy", "macro_f1")}
            print(json.dumps(row), flush=True)
            with Path("logs/prepare_decoder.jsonl").open("a") as handle:
                handle.write(json.dumps(row) + "\n")


def pixel_change(old: pd.DataFrame, new: pd.DataFrame, old_dir: Path, new_dir: Path) -> dict:
    """Over the faces in the validation split both times: share changed, mean and max |diff|."""
    faces = {}
    for label, manifest, folder in (("old", old, old_dir), ("new", new, new_dir)):
        val = manifest[manifest.split == "val"].reset_index(drop=True)
        with np.load(folder / "val.npz") as split:
            faces[label] = dict(zip(val.source, split["x"]))
    common = sorted(faces["old"].keys() & faces["new"].keys())
    diffs = [np.abs(faces["old"][n].astype(int) - faces["new"][n]) for n in common]
    return {"val_faces_compared": len(common),
            "share_of_faces_changed": round(float(np.mean([d.max() > 0 for d in diffs])), 4),
            "mean_abs_diff": round(float(np.mean([d.mean() for d in diffs])), 4),
            "max_abs_diff": int(max(d.max() for d in diffs))}


if __name__ == "__main__":
    main()
