"""Which crop margin around a detector's box matches the framing the model was trained on.

    nice uv run python bench/framing.py [--detector yunet] [--source fer2013] [--model M.keras]

Each validation face is enlarged 4x inside a mirrored surround (so the detector has a face in
context to find), detected again, and cropped with several margins; the model's accuracy on
those crops is compared with its accuracy on the original faces.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
MARGINS = (-0.1, -0.05, 0.0, 0.05, 0.1, 0.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--detector", default="auto")
    parser.add_argument("--source", default="fer2013")
    parser.add_argument("--model", default=None)
    parser.add_argument("--faces", type=int, default=600)
    args = parser.parse_args()
    from ferpipe.detect import detect_faces, resolve
    from ferpipe.files import load_split
    from ferpipe.inference import crop_face, load_classifier

    clf = load_classifier(args.model)
    x, y, _ = load_split(Path("data/prepared") / args.source, "val")
    pick = np.random.default_rng(0).permutation(len(x))[:args.faces]  # the split is sorted by class
    x, y = x[pick], y[pick]
    base = float((clf.predict_proba(x).argmax(1) == y).mean())
    crops = {m: [] for m in MARGINS}
    kept = []
    for i, face in enumerate(x):
        big = cv2.resize(face, (192, 192), interpolation=cv2.INTER_CUBIC)
        scene = cv2.copyMakeBorder(big, 96, 96, 96, 96, cv2.BORDER_REFLECT)
        boxes = detect_faces(scene, args.detector)
        if not boxes:
            continue
        box = max(boxes, key=lambda b: b[2] * b[3])
        kept.append(i)
        for m in MARGINS:
            crops[m].append(crop_face(scene, box, margin=m))
    yk = y[kept]
    out = {"detector": resolve(args.detector), "faces": len(x), "found": len(kept),
           "accuracy_on_originals_found": round(float((clf.predict_proba(x[kept]).argmax(1) == yk).mean()), 4),
           "accuracy_on_all_originals": round(base, 4),
           "accuracy_by_margin": {str(m): round(float((clf.predict_proba(np.stack(c)).argmax(1) == yk).mean()), 4)
                                  for m, c in crops.items()}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
