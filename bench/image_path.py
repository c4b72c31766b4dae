"""What one image path would change: each centre-framed source's validation faces decoded and
cut by prepare's PIL path and by the core's (OpenCV decode, `crop_face` of the centred square,
INTER_AREA), compared pixel by pixel and scored by the release.

    uv run python bench/image_path.py > reports/bench/image_path.json     # after dvc repro prepare
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    from ferpipe.imageio import load_image, to_gray
    from ferpipe.inference import crop_face, load_classifier
    from ferpipe.metrics import classification_metrics
    from ferpipe.pipeline.config import load_section
    from ferpipe.pipeline.images import decode, iter_images
    from ferpipe.pipeline.params import PrepareParams

    params = load_section("prepare", PrepareParams, ROOT / "params.yaml")
    classifier = load_classifier(None)
    out = {}
    for name, spec in params.sources.items():
        if spec.framing != "center":
            continue
        manifest = pd.read_csv(ROOT / "data" / "prepared" / name / "manifest.csv")
        val = manifest[manifest.split == "val"]
        wanted = dict(zip(val.source, val.label))
        old, new, labels = [], [], []
        for entry, _, _, raw in iter_images(ROOT / spec.source):
            if entry not in wanted:
                continue
            old.append(decode(raw, params.image_px))
            gray = to_gray(load_image(raw))
            side = min(gray.shape)
            box = ((gray.shape[1] - side) // 2, (gray.shape[0] - side) // 2, side, side)
            new.append(crop_face(gray, box, image_px=params.image_px))
            labels.append(params.classes.index(wanted[entry]))
        old, new, y = np.stack(old), np.stack(new), np.array(labels)
        diff = np.abs(old.astype(np.int16) - new.astype(np.int16))
        scores = {}
        for path_name, x in (("prepare_pil", old), ("core_opencv", new)):
            m = classification_metrics(y, classifier.predict_proba(x).argmax(1), params.classes)
            scores[path_name] = {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)}
        out[name] = {"val_faces": len(y), "identical_faces": int((diff.max(axis=(1, 2)) == 0).sum()),
                     "mean_abs_pixel_diff": round(float(diff.mean()), 3), "max_pixel_diff": int(diff.max()),
                     "release_val": scores}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
