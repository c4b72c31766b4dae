"""The released model on every prepared source's val and test split, and ONNX against Keras.

    uv run python bench/release_on_sources.py > reports/bench/release_on_sources.json

Scores model.onnx (what the core runs) per source and split with the one metrics function
(ferpipe.metrics); a source the release was not trained on (expw) gives the generalization
number. Then the release stage's parity check of model.onnx against model.keras over every
test face. Needs `dvc repro prepare` (data/prepared) and the `tf` extra.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    import numpy as np

    from ferpipe.files import load_split
    from ferpipe.inference import load_classifier, release_path
    from ferpipe.metrics import classification_metrics
    from ferpipe.modelio import load_keras
    from ferpipe.pipeline.onnx_export import parity

    classifier = load_classifier(None)
    out: dict = {"model": str(release_path().relative_to(ROOT)), "sources": {}}
    tests = []
    for folder in sorted((ROOT / "data" / "prepared").iterdir()):
        if not (folder / "test.npz").is_file():
            continue
        for split in ("val", "test"):
            x, y, classes = load_split(folder, split)
            pred = classifier.predict_proba(x).argmax(1)
            m = classification_metrics(y, pred, list(classes))
            out["sources"].setdefault(folder.name, {})[split] = {
                "faces": m["images"], "accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4),
                "recall": {c: round(v["recall"], 3) for c, v in m["per_class"].items()},
                "accuracy_se": round(float(np.sqrt(m["accuracy"] * (1 - m["accuracy"]) / len(y))), 4)}
            if split == "test":
                tests.append(x)
    out["onnx_parity"] = parity(load_keras(release_path("model.keras")), release_path(), np.concatenate(tests))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
