"""The public API: `EmotionRecognizer(...).analyze(picture)` -> the faces and their emotions.

One path for every use: decode (ferpipe.imageio), detect (ferpipe.detect), crop
(ferpipe.inference.crop_face), classify (one compiled model call). `ferpipe predict`, `score`,
`explain`, the MLflow pyfunc and the demo page all call this class.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ferpipe.detect import LANDMARKS, MIN_FACE_PX, Detection, find_faces, resolve
from ferpipe.errors import FerpipeError, ModelError
from ferpipe.imageio import MAX_PIXELS, Channels, ImageError, load_image, to_gray
from ferpipe.inference import Classifier, centre_square, crop_face, load_classifier

Box = tuple[int, int, int, int]
# With no face found, a near-square picture is taken as a face crop (a photo that is already a
# face: the detector sees no surround to find it in). Wider or taller pictures give no face.
WHOLE_IMAGE_MAX_ASPECT = 1.25
# A picture this flat (gray-level standard deviation) is no face: prepare.blank_std_threshold.
BLANK_STD = 2.0


class Located(NamedTuple):
    """A face found in a picture, and how: "detected", or "whole_image"."""

    detection: Detection
    found: str


@dataclass(frozen=True)
class Face:
    """One face: its box [x, y, w, h] in the picture, the likeliest emotion, every class's
    probability, and how it was found: "detected", or "whole_image" (no face was found and
    the picture was taken as one face crop)."""

    box: Box
    emotion: str
    probabilities: dict[str, float]
    found: str = "detected"
    landmarks: tuple[tuple[float, float], ...] | None = None  # detect.LANDMARKS, where given
    person: int | None = None  # in a video: the same number for the same person across frames

    @property
    def score(self) -> float:
        return self.probabilities[self.emotion]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object `ferpipe predict` prints for a face."""
        out: dict[str, Any] = {} if self.person is None else {"person": self.person}
        out.update({"box": [int(v) for v in self.box], "emotion": self.emotion,
                    "probabilities": {c: round(float(p), 4) for c, p in self.probabilities.items()},
                    "found": self.found})
        if self.landmarks is not None:
            out["landmarks"] = {n: [round(x, 1), round(y, 1)] for n, (x, y) in zip(LANDMARKS, self.landmarks)}
        return out


@dataclass(frozen=True)
class Frame:
    """The faces of one analysed video frame."""

    index: int
    time_s: float | None
    faces: list[Face]
    image: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class Explanation:
    """A face, the crop the model saw and its Grad-CAM map (float32 0..1, the crop's size)."""

    face: Face
    crop: np.ndarray = field(repr=False)
    heatmap: np.ndarray = field(repr=False)


class EmotionRecognizer:
    """Faces in pictures -> emotions.

    `model`: None for the released model (inside the package), a `.keras` path, an MLflow
    `models:/NAME@ALIAS` URI or a loaded `Classifier`. `detector`: "auto" (YuNet if installed,
    else Haar), "yunet", "haar" or "mtcnn". `detect=False` takes every picture as one face
    crop. `min_face`: the smallest face looked for, in pixels. `whole_image`: with no face
    found, take a near-square picture as the face (marked found="whole_image")."""

    def __init__(self, model: str | Path | Classifier | None = None, detector: str = "auto", *,
                 detect: bool = True, min_face: int = MIN_FACE_PX, whole_image: bool = True,
                 max_pixels: int = MAX_PIXELS) -> None:
        if min_face < 1:
            raise FerpipeError(f"min_face must be 1 or more, got {min_face}")
        self.detector = resolve(detector) if detect else detector  # a missing one fails now
        self.detect, self.min_face, self.whole_image = detect, min_face, whole_image
        self.max_pixels = max_pixels
        self._twin: Any = None  # the Keras model, loaded only for explain
        self.classifier: Classifier = (model if isinstance(model, Classifier)
                                       else load_classifier(None if model is None else str(model)))

    @property
    def classes(self) -> list[str]:
        return list(self.classifier.classes)

    def __repr__(self) -> str:
        return (f"EmotionRecognizer(model={self.classifier.source!r}, detector={self.detector!r}, "
                f"classes={self.classes})")

    def read(self, image: Any, channels: Channels = "BGR") -> np.ndarray:
        """The picture as BGR uint8 [H, W, 3], as every method reads it; a picture too small
        to hold a face of `min_face` pixels is an ImageError."""
        picture = load_image(image, channels, self.max_pixels)
        height, width = picture.shape[:2]
        if self.detect and min(height, width) < self.min_face:
            raise ImageError(f"{self._name(image)}: {width}x{height} pixels is too small to hold a "
                             f"face of min_face={self.min_face} pixels")
        return picture

    @staticmethod
    def _name(image: Any) -> str:
        return str(image) if isinstance(image, str | Path) and not str(image).startswith("data:") else "image"

    def locate(self, gray: np.ndarray) -> list[Located]:
        """Each face in a gray picture: its detection and how it was found."""
        height, width = gray.shape
        side = min(height, width)
        whole = Detection(centre_square(gray))
        if not self.detect:
            return [Located(whole, "whole_image")]
        found = find_faces(gray, self.detector, self.min_face)
        if found:
            return [Located(d, "detected") for d in found]
        # A near-square picture may be a face crop, but not one of a single flat colour.
        if (self.whole_image and max(height, width) <= WHOLE_IMAGE_MAX_ASPECT * side
                and float(gray[::max(1, side // 256), ::max(1, side // 256)].std()) >= BLANK_STD):
            return [Located(whole, "whole_image")]
        return []

    def crops(self, image: Any, channels: Channels = "BGR") -> tuple[list[Located], np.ndarray]:
        """The faces found and their crops uint8 [N, px, px], as the model sees them."""
        gray = to_gray(self.read(image, channels))  # decoded and made gray once, passed down
        located = self.locate(gray)
        px = self.classifier.image_px
        faces = [crop_face(gray, loc.detection.box, image_px=px) for loc in located]
        return located, np.stack(faces) if faces else np.zeros((0, px, px), np.uint8)

    def _faces(self, located: list[Located], probs: np.ndarray,
               people: list[int] | None = None) -> list[Face]:
        classes = self.classifier.classes
        return [Face(tuple(int(v) for v in loc.detection.box), classes[int(np.argmax(p))],
                     {c: float(v) for c, v in zip(classes, p)}, loc.found, loc.detection.landmarks,
                     None if people is None else people[i])
                for i, (loc, p) in enumerate(zip(located, probs))]

    def analyze(self, image: Any, channels: Channels = "BGR") -> list[Face]:
        """The faces of one picture, left to right. `image`: a path, encoded bytes, a data
        URL, a NumPy array (HxW gray, or colour in `channels` order) or a PIL image."""
        located, crops = self.crops(image, channels)
        return self._faces(located, self.classifier.predict_proba(crops))

    def analyze_video(self, path: str | Path, every: int = 1, smooth_s: float = 0.5) -> Iterator[Frame]:
        """Every `every`-th frame of a video, with its faces (skipped frames are not decoded).

        Each face carries `person`, the same number for the same person across frames
        (ferpipe.tracker), and its probabilities averaged over that person's last `smooth_s`
        seconds (0: each frame alone)."""
        import cv2

        from ferpipe.tracker import FaceTracker

        if every < 1:
            raise FerpipeError(f"every must be 1 or more, got {every}")
        if smooth_s < 0:
            raise FerpipeError(f"smooth_s must be 0 or more, got {smooth_s}")
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not capture.isOpened():
            raise ImageError(f"{path}: not a video OpenCV can read")
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        step = 1 / fps if fps > 0 else 1 / 25  # a stream without a rate is timed as 25 fps
        tracker = FaceTracker(window_s=smooth_s, max_missed_s=max(1.0, 2 * every * step))
        index = 0
        try:
            while True:
                if index % every:
                    if not capture.grab():
                        break
                    index += 1
                    continue
                ok, frame = capture.read()
                if not ok:
                    break
                located, crops = self.crops(frame)
                people, probs = tracker.update(index * step, [loc.detection.box for loc in located],
                                               self.classifier.predict_proba(crops))
                yield Frame(index, round(index / fps, 3) if fps > 0 else None,
                            self._faces(located, probs, people), frame)
                index += 1
        finally:
            capture.release()
        if index == 0:
            raise ImageError(f"{path}: no frames could be decoded")

    def keras_model(self) -> Any:
        """The Keras model Grad-CAM needs: the classifier's own, or the release's Keras twin
        (model.keras beside model.onnx); needs the `tf` extra."""
        from ferpipe.inference import KerasClassifier, OnnxClassifier, load_classifier

        if isinstance(self.classifier, KerasClassifier):
            return self.classifier.model
        twin = Path(self.classifier.source).with_suffix(".keras")
        if not isinstance(self.classifier, OnnxClassifier) or not twin.is_file():
            raise ModelError(f"{self.classifier.source}: Grad-CAM needs the Keras model; pass "
                             "model=PATH.keras")
        if self._twin is None:
            self._twin = load_classifier(str(twin))
        return self._twin.model

    def explain(self, image: Any, channels: Channels = "BGR") -> list[Explanation]:
        """Grad-CAM maps for the same faces `analyze` finds, for their predicted emotion."""
        from ferpipe.explain import gradcam

        located, crops = self.crops(image, channels)
        faces = self._faces(located, self.classifier.predict_proba(crops))
        if not faces:
            return []
        picked = np.array([self.classes.index(f.emotion) for f in faces])
        maps = gradcam(self.keras_model(), crops, picked)
        return [Explanation(f, c, m) for f, c, m in zip(faces, crops, maps)]
