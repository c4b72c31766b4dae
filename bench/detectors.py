"""Compare face detectors on real photos with known face boxes; prints recall and false positives.

    nice -n 19 uv run python bench/detectors.py            # the detectors installed here (haar, yunet, mtcnn)
    FERPIPE_DETECTORS=haar uv run python bench/detectors.py

Photos ship with installed packages: scikit-image's astronaut and cameraman, matplotlib's
Grace Hopper (one face each, boxes checked by eye), five collages of them at several scales
with LFW face crops (scikit-image's lfw_subset) on a grass texture (11 faces each, 20 to 220
px), the 100 LFW faces and 100 LFW non-face crops in grids, and 15 photos without a face.
A detection counts as a hit when its IoU with an unmatched true box is at least 0.3.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data as sd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from ferpipe.detect import detect_faces, has_mtcnn, has_yunet

HOPPER = Path(cv2.__file__).parents[1] / "matplotlib" / "mpl-data" / "sample_data" / "grace_hopper.jpg"
LFW = Path(sd.__file__).parent / "lfw_subset.npy"
NEGATIVES = ("coffee", "chelsea", "rocket", "coins", "brick", "horse", "hubble_deep_field",
             "immunohistochemistry", "page", "text", "clock", "moon", "retina", "logo", "grass")


def photos() -> dict[str, tuple[np.ndarray, list]]:
    return {"astronaut": (cv2.cvtColor(sd.astronaut(), cv2.COLOR_RGB2BGR), [(182, 64, 83, 107)]),
            "camera": (cv2.cvtColor(sd.camera(), cv2.COLOR_GRAY2BGR), [(197, 116, 58, 81)]),
            "hopper": (cv2.imread(str(HOPPER)), [(178, 110, 173, 220)])}


def lfw_faces() -> np.ndarray:
    return (np.load(LFW) * 255).astype(np.uint8)  # 100 faces then 100 non-faces, 25x25


def collage(seed: int, width: int = 1400, height: int = 900) -> tuple[np.ndarray, list]:
    """Photos (some mirrored) and upscaled LFW crops at several scales, shelf-packed."""
    rng = np.random.default_rng(seed)
    items, lfw = [], lfw_faces()
    for name, scale in zip(("astronaut", "hopper", "camera", "astronaut", "hopper", "camera"),
                           (0.8, 0.5, 0.6, 0.3, 0.2, 0.35)):
        img, boxes = photos()[name]
        if rng.random() < 0.5:
            img, boxes = img[:, ::-1].copy(), [(img.shape[1] - x - w, y, w, h) for x, y, w, h in boxes]
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        items.append((img, [tuple(int(v * scale) for v in b) for b in boxes]))
    for size in (40, 56, 72, 96, 120):
        face = cv2.resize(lfw[rng.integers(100)], (size, size), interpolation=cv2.INTER_CUBIC)
        pad = size // 3  # context around the tight crop
        tile = cv2.copyMakeBorder(face, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        items.append((cv2.cvtColor(tile, cv2.COLOR_GRAY2BGR), [(pad, pad, size, size)]))
    canvas = cv2.resize(cv2.cvtColor(sd.grass(), cv2.COLOR_GRAY2BGR), (width, height))
    truth, x, y, shelf = [], 8, 8, 0
    for img, boxes in items:
        h, w = img.shape[:2]
        if x + w > width:
            x, y, shelf = 8, y + shelf + 8, 0
        canvas[y:y + h, x:x + w] = img
        truth += [(x + bx, y + by, bw, bh) for bx, by, bw, bh in boxes]
        x, shelf = x + w + 8, max(shelf, h)
    return canvas, truth


def lfw_grids(size: int = 64) -> list[tuple[str, np.ndarray, list]]:
    lfw, pad = lfw_faces(), size // 3
    step = size + 2 * pad
    out = []
    for start in range(0, 200, 25):
        tiles = [cv2.copyMakeBorder(cv2.resize(lfw[i], (size, size), interpolation=cv2.INTER_CUBIC),
                                    pad, pad, pad, pad, cv2.BORDER_REPLICATE) for i in range(start, start + 25)]
        grid = np.vstack([np.hstack(tiles[r * 5:(r + 1) * 5]) for r in range(5)])
        truth = [((k % 5) * step + pad, (k // 5) * step + pad, size, size)
                 for k, i in enumerate(range(start, start + 25)) if i < 100]
        out.append((f"lfw{start}", cv2.cvtColor(grid, cv2.COLOR_GRAY2BGR), truth))
    return out


def dataset() -> list[tuple[str, str, np.ndarray, list]]:
    items = [("photos", n, im, t) for n, (im, t) in photos().items()]
    items += [("collages", f"collage{s}", *collage(s)) for s in range(5)]
    items += [("lfw", n, im, t) for n, im, t in lfw_grids()]
    for name in NEGATIVES:
        im = getattr(sd, name)()
        im = (im * 255).astype(np.uint8) if im.dtype != np.uint8 else im
        im = im if im.ndim == 2 else cv2.cvtColor(im[..., :3], cv2.COLOR_RGB2BGR)
        items.append(("no face", name, im, []))
    return items


def iou(a, b) -> float:
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih)


def match(found: list, truth: list, threshold: float = 0.3) -> tuple[int, int]:
    """(hits, false positives), greedy one-to-one."""
    used = set()
    for t in truth:
        best = max(((iou(f, t), j) for j, f in enumerate(found) if j not in used), default=(0.0, -1))
        if best[0] >= threshold:
            used.add(best[1])
    return len(used), len(found) - len(used)


def main() -> None:
    default = ["haar"] + ["yunet"] * has_yunet() + ["mtcnn"] * has_mtcnn()
    wanted = os.environ.get("FERPIPE_DETECTORS", ",".join(default)).split(",")
    data = dataset()
    print(f"{'detector':8s} {'set':9s} {'images':>6s} {'faces':>5s} {'found':>5s} {'false+':>6s} {'cpu ms/img':>10s}")
    for name in wanted:
        detect_faces(data[0][2], detector=name)  # load the model once before timing
        totals: dict[str, list] = {}
        for group, image_name, image, truth in data:
            start = time.process_time()  # CPU time: wall time is meaningless on a shared machine
            found = detect_faces(image, detector=name)
            ms = (time.process_time() - start) * 1000
            hits, false_pos = match(found, truth)
            row = totals.setdefault(group, [0, 0, 0, 0, 0.0])
            for i, v in enumerate((1, len(truth), hits, false_pos, ms)):
                row[i] += v
            if os.environ.get("VERBOSE"):
                print(json.dumps({"detector": name, "image": image_name, "faces": len(truth),
                                  "found": hits, "false_positives": false_pos, "cpu_ms": round(ms)}))
        for group, (n, faces, hits, false_pos, ms) in totals.items():
            print(f"{name:8s} {group:9s} {n:6d} {faces:5d} {hits:5d} {false_pos:6d} {ms / n:10.0f}")


if __name__ == "__main__":
    main()
