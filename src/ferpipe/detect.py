"""Face detection: boxes (x, y, w, h) of the faces in a photo.

Two backends. OpenCV's Haar cascade (`haarcascade_frontalface_alt2`, shipped in
opencv-python-headless) always works. MTCNN (the `mtcnn` package, weights inside the wheel)
is used when it is installed: on real photos with faces from 20 to 220 px it found every
face, also turned ones the frontal cascade misses, with no false positive, at 2-4x the CPU
time (numbers in the README). `detector="auto"` picks MTCNN when importable, else Haar.
"""
from __future__ import annotations

import functools
import importlib.util
from typing import Any

import cv2
import numpy as np

Box = tuple[int, int, int, int]
DETECTORS = ("auto", "haar", "mtcnn")
HAAR_CASCADE = "haarcascade_frontalface_alt2.xml"
# Measured with bench/detectors.py: alt2 had the best recall of OpenCV's frontal cascades and
# the fewest false positives. Pyramid steps of 1.2 found the same faces as 1.1 or 1.05 with
# fewer false positives at 60% of the time; a profile cascade found the one turned face of the
# photos but none more in the collages, with more false positives, at 3x the time.
HAAR_SCALE_FACTOR = 1.2
HAAR_MIN_NEIGHBORS = 3
# Faces under 32 px carry too little for a 48x48 classifier, and skipping the pyramid levels
# that look for them halves detection time (640x480: 58 -> 35 ms quiet) for 2 of the 55 collage
# faces of bench/detectors.py (45 -> 43; LFW 98/100 both). `--min-face 20` looks for them.
MIN_FACE_PX = 32
MTCNN_MIN_CONFIDENCE = 0.9
# Detection runs on a copy no larger than this: a 12-megapixel phone photo would otherwise
# take seconds, and faces that end up under MIN_FACE_PX there are too small to classify.
MAX_SIDE = 1600


def has_mtcnn() -> bool:
    return importlib.util.find_spec("mtcnn") is not None


def resolve(detector: str = "auto") -> str:
    """The backend `detector` names; 'auto' is MTCNN when installed, else Haar."""
    if detector not in DETECTORS:
        raise ValueError(f"unknown face detector '{detector}' (choose from {', '.join(DETECTORS)})")
    if detector == "auto":
        return "mtcnn" if has_mtcnn() else "haar"
    if detector == "mtcnn" and not has_mtcnn():
        raise ValueError("face detector 'mtcnn' is not installed (add the `mtcnn` package); "
                         "use --detector haar")
    return detector


def to_gray(image: np.ndarray) -> np.ndarray:
    """HxW gray, HxWx3 BGR or HxWx4 BGRA (uint8, or other numeric types) -> HxW uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        scale = 255.0 if image.dtype.kind == "f" and image.size and image.max() <= 1.0 else 1.0
        if image.dtype == np.uint16:
            scale = 1 / 257
        image = np.clip(image.astype(np.float32) * scale, 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] in (3, 4):
        code = cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        return cv2.cvtColor(image, code)
    raise ValueError(f"expected an HxW gray or HxWx3 BGR image, got shape {list(image.shape)}")


@functools.lru_cache(maxsize=1)
def _haar() -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + HAAR_CASCADE)
    if cascade.empty():
        raise ValueError(f"OpenCV's {HAAR_CASCADE} is missing; reinstall opencv-python-headless<5")
    return cascade


@functools.lru_cache(maxsize=1)
def _mtcnn() -> Any:
    from mtcnn import MTCNN

    return MTCNN()


def _detect_haar(gray: np.ndarray, min_px: int) -> list[Box]:
    found = _haar().detectMultiScale(gray, scaleFactor=HAAR_SCALE_FACTOR,
                                     minNeighbors=HAAR_MIN_NEIGHBORS, minSize=(min_px, min_px))
    return [tuple(int(v) for v in box) for box in found]


def _detect_mtcnn(gray: np.ndarray, min_px: int) -> list[Box]:
    rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)  # the training data is gray, so is detection
    found = _mtcnn().detect_faces(rgb, min_face_size=min_px)
    return [tuple(int(v) for v in face["box"]) for face in found
            if face["confidence"] >= MTCNN_MIN_CONFIDENCE]


def detect_faces(image: np.ndarray, detector: str = "auto",
                 min_face_px: int = MIN_FACE_PX) -> list[Box]:
    """Face boxes (x, y, w, h) in pixel coordinates of `image` (HxW gray or HxWx3 BGR uint8),
    sorted left to right."""
    gray = to_gray(image)
    height, width = gray.shape
    if min(height, width) < min_face_px:
        return []
    scale = min(1.0, MAX_SIDE / max(height, width))
    small = gray if scale == 1.0 else cv2.resize(gray, (round(width * scale), round(height * scale)),
                                                 interpolation=cv2.INTER_AREA)
    min_px = max(12, round(min_face_px * scale))
    backend = resolve(detector)
    boxes = _detect_mtcnn(small, min_px) if backend == "mtcnn" else _detect_haar(small, min_px)
    out = []
    for x, y, w, h in boxes:
        x0, y0 = max(0, round(x / scale)), max(0, round(y / scale))
        x1, y1 = min(width, round((x + w) / scale)), min(height, round((y + h) / scale))
        if x1 > x0 and y1 > y0:
            out.append((x0, y0, x1 - x0, y1 - y0))
    return sorted(out)
