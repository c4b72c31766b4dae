"""Use the model: faces in photos and videos -> emotions.

TensorFlow is imported only when a model is loaded, so `ferpipe --help` stays fast.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from ferpipe.detect import MIN_FACE_PX, detect_faces, to_gray

IMAGE_PX = 48
# Margin around a detected box, as a fraction of its side. Measured on 400 FER2013 faces
# enlarged 4x in a mirrored surround, detected again (Haar) and cropped: the box as it is (0.0)
# matched the original framing best (pixel correlation 0.71, 0.46 at 0.2) and kept the release
# model's accuracy closest to that on the originals (0.83 on the crops, 0.76 at 0.2, 0.86 on
# the originals); -0.1 to 0.05 were within a point of 0.0.
MARGIN = 0.0
RELEASE = Path("models/release/model.keras")
# Repo root of a source checkout (uv installs the project editable), so the default model is
# found from any working directory.
REPO_ROOT = Path(__file__).resolve().parents[2]


def crop_face(gray: np.ndarray, box: tuple[int, int, int, int], margin: float = MARGIN,
              image_px: int = IMAGE_PX) -> np.ndarray:
    """A square crop centred on `box` with `margin` x the box's larger side added on each side,
    padded by repeating the border where it leaves the image, resized with INTER_AREA to
    `image_px` x `image_px` uint8 gray: FER2013's framing for a detector's face box."""
    gray = to_gray(gray)
    x, y, w, h = (int(v) for v in box)
    side = max(1, round(max(w, h) * (1 + 2 * margin)))
    x0, y0 = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
    height, width = gray.shape
    pad = [max(0, -y0), max(0, y0 + side - height), max(0, -x0), max(0, x0 + side - width)]
    crop = gray[max(0, y0):min(height, y0 + side), max(0, x0):min(width, x0 + side)]
    if crop.size == 0:
        raise ValueError(f"box {list(box)} lies outside the {width}x{height} image")
    if any(pad):
        crop = cv2.copyMakeBorder(crop, *pad, cv2.BORDER_REPLICATE)
    return cv2.resize(crop, (image_px, image_px), interpolation=cv2.INTER_AREA)


class Classifier:
    """A Keras emotion model and its class names; `predict_proba` runs one compiled function."""

    def __init__(self, model: Any, classes: list[str], source: str):
        import tensorflow as tf

        shape = tuple(model.input_shape[1:])
        if len(shape) != 3 or shape[0] != shape[1] or shape[2] != 1:
            raise ValueError(f"{source}: model takes input {model.input_shape}, not square gray faces")
        outputs = int(model.output_shape[-1])
        if outputs != len(classes):
            raise ValueError(f"{source}: model has {outputs} outputs but {len(classes)} class names "
                             f"{classes}; fix the model card / params.yaml beside it")
        self.model, self.classes, self.source = model, list(classes), source
        self.image_px = int(shape[0])
        # model.predict costs ~45 ms a call in set-up; a traced function ~1.5 ms per face.
        spec = tf.TensorSpec([None, self.image_px, self.image_px, 1], tf.float32)
        self._infer = tf.function(lambda x: model(x, training=False), input_signature=[spec],
                                  autograph=False)  # plain call: nothing for AutoGraph to convert

    def predict_proba(self, faces: np.ndarray) -> np.ndarray:
        """uint8 faces [N, px, px] or [N, px, px, 1] (raw pixels 0..255) -> float32 [N, K]."""
        faces = np.asarray(faces)
        if faces.ndim == 3:
            faces = faces[..., None]
        if faces.ndim != 4 or faces.shape[1:] != (self.image_px, self.image_px, 1):
            raise ValueError(f"expected faces [N, {self.image_px}, {self.image_px}], got {list(faces.shape)}")
        if len(faces) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.asarray(self._infer(faces.astype(np.float32)), dtype=np.float32)


def _params_classes(folders: list[Path]) -> list[str] | None:
    """prepare.classes of the first params.yaml in `folders`."""
    import yaml

    for folder in folders:
        params = folder / "params.yaml"
        if params.is_file():
            classes = ((yaml.safe_load(params.read_text()) or {}).get("prepare") or {}).get("classes")
            if classes:
                return [str(c) for c in classes]
    return None


def _classes_near(path: Path) -> list[str] | None:
    """Class names from a model_card.json beside the model, else from a params.yaml in the
    working directory or a folder above the model."""
    card = path.parent / "model_card.json"
    if card.is_file():
        return list(json.loads(card.read_text())["classes"])
    return _params_classes([Path.cwd(), *path.resolve().parents])


def _load_keras(path: Path) -> Any:
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for a bad file; the user needs one line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: cannot load the model ({reason[:200]})") from err


def _load_registry(ref: str) -> Classifier:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` from the MLflow registry: a Keras model,
    or a pyfunc whose artifacts hold a .keras file and classes.json (ferpipe.serve)."""
    import os

    import mlflow

    from ferpipe.tracking import tracking_uri

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr stays for errors
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise FileNotFoundError(f"{ref}: no MLflow database at {uri[len('sqlite:///'):]}; run "
                                "from the repo root or set MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(ref))
    except Exception as err:  # MlflowException for unknown names/aliases, OSError for storage
        raise ValueError(f"{ref}: cannot fetch from the MLflow registry at {uri} "
                         f"({str(err).splitlines()[0][:200]})") from err
    keras_files = sorted(local.rglob("*.keras"))
    classes_file = next(iter(sorted(local.rglob("classes.json"))), None)
    if keras_files:
        model = _load_keras(keras_files[0])
        source = f"{ref} ({keras_files[0].name})"
    else:
        import mlflow.keras

        try:
            model = mlflow.keras.load_model(ref)
        except Exception as err:
            raise ValueError(f"{ref}: not a Keras model ({str(err).splitlines()[0][:200]})") from err
        source = ref
    classes = json.loads(classes_file.read_text()) if classes_file else _params_classes([Path.cwd()])
    if not classes:
        raise ValueError(f"{ref}: no class names (no classes.json in the model, no params.yaml "
                         "with prepare.classes here)")
    return Classifier(model, classes, source)


def load_classifier(ref: str | None = None) -> Classifier:
    """The release model (default), a .keras path, or `models:/name@alias` from MLflow."""
    if ref and ref.startswith("models:/"):
        return _load_registry(ref)
    if ref:
        path = Path(ref)
    else:
        path = RELEASE if RELEASE.is_file() else REPO_ROOT / RELEASE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file (pass --model PATH.keras or "
                                "--model models:/fer-emotion@champion)")
    if path.is_dir() or path.suffix not in (".keras", ".h5"):
        raise ValueError(f"{path}: not a .keras model file")
    classes = _classes_near(path)
    if not classes:
        raise ValueError(f"{path}: no class names: put a model_card.json with 'classes' beside it")
    return Classifier(_load_keras(path), classes, str(path))


def _result(box: Any, probs: np.ndarray, classes: list[str]) -> dict:
    return {"box": [int(v) for v in box], "emotion": classes[int(np.argmax(probs))],
            "probabilities": {c: round(float(p), 4) for c, p in zip(classes, probs)}}


def analyze_image(image: np.ndarray, classifier: Any, detect: bool = True, detector: str = "auto",
                  margin: float = MARGIN, min_face_px: int = MIN_FACE_PX) -> list[dict]:
    """One dict per face: box [x, y, w, h], emotion, probabilities {class: p}. With
    detect=False the image is one face crop: its centred square, as `prepare` takes it."""
    gray = to_gray(image)
    px = getattr(classifier, "image_px", IMAGE_PX)
    height, width = gray.shape
    side = min(height, width)
    whole = ((width - side) // 2, (height - side) // 2, side, side)
    boxes = detect_faces(gray, detector, min_face_px) if detect else [whole]
    if not boxes:
        return []
    faces = np.stack([crop_face(gray, box, margin if detect else 0.0, px) for box in boxes])
    probs = classifier.predict_proba(faces)
    return [_result(box, p, classifier.classes) for box, p in zip(boxes, probs)]


def analyze_video(path: str | Path, classifier: Any, every: int = 1, detector: str = "auto",
                  detect: bool = True, on_frame: Any = None,
                  min_face_px: int = MIN_FACE_PX) -> Iterator[dict]:
    """Per-face dicts with `frame` and `time_s` (a frame without a face gives one with
    faces: 0), then one {"summary": ...}. `on_frame(frame, results)` sees each analysed frame."""
    if every < 1:
        raise ValueError(f"--every must be 1 or more, got {every}")
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise ValueError(f"{path}: not an image or a video OpenCV can read")
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    counts = dict.fromkeys(classifier.classes, 0)
    index = analysed = faces = empty = 0
    start = time.perf_counter()
    try:
        while True:
            if index % every:
                if not capture.grab():  # skipped frames are not decoded
                    break
                index += 1
                continue
            ok, frame = capture.read()
            if not ok:
                break
            results = analyze_image(frame, classifier, detect, detector, min_face_px=min_face_px)
            analysed += 1
            stamp = {"frame": index, "time_s": round(index / fps, 3) if fps > 0 else None}
            if not results:
                empty += 1
                yield {**stamp, "faces": 0}
            for face in results:
                counts[face["emotion"]] += 1
                faces += 1
                yield {**stamp, **face}
            if on_frame is not None:
                on_frame(frame, results)
            index += 1
    finally:
        capture.release()
    if index == 0:
        raise ValueError(f"{path}: no frames could be decoded")
    elapsed = time.perf_counter() - start
    yield {"summary": {"frames": index, "frames_analyzed": analysed, "every": every,
                       "video_fps": round(fps, 3), "faces": faces, "frames_without_face": empty,
                       "emotions": counts, "seconds": round(elapsed, 3),
                       "fps": round(analysed / elapsed, 2) if elapsed > 0 else None}}


def draw(image: np.ndarray, results: list[dict]) -> np.ndarray:
    """A BGR copy of `image` with each face's box and 'emotion p' drawn."""
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[..., :3].copy()
    thick = max(1, round(max(out.shape[:2]) / 400))
    for face in results:
        x, y, w, h = face["box"]
        label = f"{face['emotion']} {face['probabilities'][face['emotion']]:.2f}"
        scale = max(0.4, w / 160)
        cv2.rectangle(out, (x, y), (x + w, y + h), (0, 220, 0), thick)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y - 4 if y - th - base - 4 >= 0 else y + h + th + 4
        cv2.rectangle(out, (x, ty - th - base), (x + tw, ty + base), (0, 220, 0), cv2.FILLED)
        cv2.putText(out, label, (x, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return out
