"""The real photos' test split as users meet it: each original photo through the whole use path
(decode, face detection, crop, model), not the prepared 48x48 crops.

    nice uv run python bench/photos_through_detection.py [--model M.keras] [--detector yunet]

Prints, per model, how each face was found (detected / whole image / none), accuracy and
macro-F1 over all photos (a photo with no face counts as wrong), and per-class recall.
"""
from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append", default=None,
                        help="a .keras file (repeatable; default: models/release/model.keras)")
    parser.add_argument("--detector", default="auto")
    parser.add_argument("--source", default="real")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    import yaml
    from sklearn.metrics import f1_score, recall_score

    from ferpipe import EmotionRecognizer

    params = yaml.safe_load(Path("params.yaml").read_text())["prepare"]
    archive = params["sources"][args.source]["source"]
    classes = params["classes"]
    manifest = pd.read_csv(Path("data/prepared") / args.source / "manifest.csv")
    rows = manifest[manifest.split == args.split]
    with zipfile.ZipFile(archive) as zf:
        photos = [(zf.read(name), classes.index(label)) for name, label in zip(rows.source, rows.label)]
    for model in args.model or ["models/release/model.keras"]:
        recognizer = EmotionRecognizer(model, args.detector)
        found, pred = {"detected": 0, "whole_image": 0, "none": 0}, []
        for data, _ in photos:
            faces = recognizer.analyze(data)
            if not faces:
                found["none"] += 1
                pred.append(-1)
                continue
            face = max(faces, key=lambda f: f.box[2] * f.box[3])
            found[face.found] += 1
            pred.append(classes.index(face.emotion))
        y, pred = np.array([label for _, label in photos]), np.array(pred)
        labels = list(range(len(classes)))
        recall = recall_score(y, pred, labels=labels, average=None, zero_division=0)
        print(json.dumps({"model": model, "detector": recognizer.detector, "photos": len(y),
                          "found": found, "accuracy": round(float((pred == y).mean()), 4),
                          "macro_f1": round(float(f1_score(y, pred, labels=labels, average="macro",
                                                           zero_division=0)), 4),
                          "recall": {c: round(float(r), 3) for c, r in zip(classes, recall)}}))


if __name__ == "__main__":
    main()
