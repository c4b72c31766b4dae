"""The inference core: a model and its classes, the face crop, and faces -> probabilities.

Imports only NumPy and OpenCV at load; ONNX Runtime for the release (model.onnx), TensorFlow
only for a .keras model (the `tf` extra), MLflow only for a `models:/` URI. Every use command, the pyfunc and the demo go through EmotionRecognizer
(ferpipe.recognizer), which calls the functions here; the pipeline uses `crop_face` to make
its training crops, so training and use frame a face the same way.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ferpipe.errors import ModelError
from ferpipe.imageio import to_gray
from ferpipe.modelio import load_keras

IMAGE_PX = 48
# Margin around a detected box, as a fraction of its side. Measured on 400 FER2013 faces
# enlarged 4x in a mirrored surround, detected again (Haar) and cropped: the box as it is (0.0)
# matched the original framing best (pixel correlation 0.71, 0.46 at 0.2) and kept the release
# model's accuracy closest to that on the originals (0.83 on the crops, 0.76 at 0.2, 0.86 on
# the originals); -0.1 to 0.05 were within a point of 0.0.
MARGIN = 0.0
# The released model: inside an installed wheel (package data), else in the source checkout
# this module runs from (uv installs the project editable), from any working directory.
PACKAGED_RELEASE = Path(__file__).resolve().parent / "release" / "model.onnx"
CHECKOUT_RELEASE = Path(__file__).resolve().parents[2] / "models" / "release" / "model.onnx"
# The ONNX file's interface, written by the release stage and read here.
INPUT_NAME, OUTPUT_NAME = "faces", "probabilities"
ONNX_INPUT_CONTRACT = ("float32 [batch, px, px, 1] raw gray pixels 0..255 (OpenCV BGR->gray, square "
                       "face crop resized with INTER_AREA); output float32 [batch, classes] probabilities")


def release_path(name: str = "model.onnx") -> Path:
    """Where the released model is: the wheel's copy, else the checkout's (`name`: model.onnx,
    or model.keras, its Keras twin, for Grad-CAM)."""
    packaged = PACKAGED_RELEASE.with_name(name)
    return packaged if packaged.is_file() else CHECKOUT_RELEASE.with_name(name)


def centre_square(gray: np.ndarray, share: float = 1.0) -> tuple[int, int, int, int]:
    """The centred square box (x, y, w, h) whose side is `share` of the picture's shorter side:
    the whole of a picture taken as one face (1.0), or where a source puts its face (0.5)."""
    height, width = gray.shape[:2]
    side = max(1, int(min(height, width) * share))
    return (width - side) // 2, (height - side) // 2, side, side


def crop_face(gray: np.ndarray, box: tuple[int, int, int, int], margin: float = MARGIN,
              image_px: int = IMAGE_PX, eyes: tuple[tuple[float, float], ...] | None = None) -> np.ndarray:
    """A square crop centred on `box` with `margin` x the box's larger side added on each side,
    padded by repeating the border where it leaves the image, resized with INTER_AREA to
    `image_px` x `image_px` uint8 gray: FER2013's framing for a detector's face box.

    With `eyes` (the two eye landmarks, as the detector gives them first), the picture is first
    turned about the box's centre so that the eyes are level."""
    gray = to_gray(gray)
    x, y, w, h = (int(v) for v in box)
    side = max(1, round(max(w, h) * (1 + 2 * margin)))
    x0, y0 = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
    height, width = gray.shape
    if eyes is not None:
        (ax, ay), (bx, by) = eyes[:2]
        turn = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), float(np.degrees(np.arctan2(by - ay, bx - ax))), 1.0)
        turn[:, 2] -= (x0, y0)  # the square's corner to the origin: the output is the square
        level = cv2.warpAffine(gray, turn, (side, side), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
        return cv2.resize(level, (image_px, image_px), interpolation=cv2.INTER_AREA)
    pad = [max(0, -y0), max(0, y0 + side - height), max(0, -x0), max(0, x0 + side - width)]
    crop = gray[max(0, y0):min(height, y0 + side), max(0, x0):min(width, x0 + side)]
    if crop.size == 0:
        raise ModelError(f"box {list(box)} lies outside the {width}x{height} image")
    if any(pad):
        crop = cv2.copyMakeBorder(crop, *pad, cv2.BORDER_REPLICATE)
    return cv2.resize(crop, (image_px, image_px), interpolation=cv2.INTER_AREA)


class Classifier:
    """A face classifier and its class names; `predict_proba` takes raw gray faces.

    Two kinds: OnnxClassifier (the release, on ONNX Runtime: the core needs nothing else) and
    KerasClassifier (a .keras model, with the `tf` extra)."""

    def __init__(self, classes: list[str], source: str, image_px: int, outputs: int):
        if outputs != len(classes):
            raise ModelError(f"{source}: model has {outputs} outputs but {len(classes)} class names "
                             f"{classes}; fix the model card beside it")
        self.classes, self.source, self.image_px = list(classes), source, int(image_px)

    def _run(self, faces: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, faces: np.ndarray) -> np.ndarray:
        """uint8 faces [N, px, px] or [N, px, px, 1] (raw pixels 0..255) -> float32 [N, K]."""
        faces = np.asarray(faces)
        if faces.ndim == 3:
            faces = faces[..., None]
        if faces.ndim != 4 or faces.shape[1:] != (self.image_px, self.image_px, 1):
            raise ModelError(f"expected faces [N, {self.image_px}, {self.image_px}], got {list(faces.shape)}")
        if len(faces) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.asarray(self._run(faces.astype(np.float32)), dtype=np.float32)


class OnnxClassifier(Classifier):
    """A model.onnx written by the release stage: classes and input size in its metadata.

    Threads: ONNX Runtime's default (one per physical core), not spinning. Measured here on 2
    quiet cores, one face / a batch of 256: 1 thread 1.70 / 389 ms, 2 threads 1.13 / 200 ms,
    2 spinning threads 0.92 / 200 ms; spinning threads were slower than one thread once the
    cores were busy, which is how a server or a video loop runs."""

    def __init__(self, path: Path | str, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # its warnings would be lines on the user's stderr
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ONNX Runtime raises its own types for a bad file
            raise ModelError(f"{path}: cannot load the ONNX model ({str(err).splitlines()[0][:200]})") from err
        meta = self.session.get_modelmeta().custom_metadata_map
        if "classes" not in meta:
            raise ModelError(f"{path}: no 'classes' in the ONNX metadata (export it with the release stage)")
        shape = self.session.get_inputs()[0].shape
        if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 1:
            raise ModelError(f"{path}: model takes input {shape}, not square gray faces")
        self.input_name = self.session.get_inputs()[0].name
        super().__init__(json.loads(meta["classes"]), str(path), int(shape[1]),
                         int(self.session.get_outputs()[0].shape[-1]))

    def _run(self, faces: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: faces})[0]


class KerasClassifier(Classifier):
    """A Keras model (the `tf` extra); `predict_proba` runs one compiled function."""

    def __init__(self, model: Any, classes: list[str], source: str):
        tf = import_tf(source)
        shape = tuple(model.input_shape[1:])
        if len(shape) != 3 or shape[0] != shape[1] or shape[2] != 1:
            raise ModelError(f"{source}: model takes input {model.input_shape}, not square gray faces")
        super().__init__(classes, source, int(shape[0]), int(model.output_shape[-1]))
        self.model = model
        # model.predict costs ~45 ms a call in set-up; a traced function ~1.5 ms per face.
        spec = tf.TensorSpec([None, self.image_px, self.image_px, 1], tf.float32)
        self._infer = tf.function(lambda x: model(x, training=False), input_signature=[spec],
                                  autograph=False)  # plain call: nothing for AutoGraph to convert

    def _run(self, faces: np.ndarray) -> np.ndarray:
        return np.asarray(self._infer(faces))


def import_tf(what: str) -> Any:
    """TensorFlow, or one line saying which extra installs it."""
    from ferpipe import quiet  # noqa: F401  (its start-up noise filtered, before it loads)

    try:
        import tensorflow as tf
    except ImportError:
        raise ModelError(f"{what} needs TensorFlow: pip install 'ferpipe[tf]'") from None
    return tf


def _card_classes(path: Path) -> list[str] | None:
    """Class names from the model_card.json beside a model file."""
    card = path.parent / "model_card.json"
    if card.is_file():
        return list(json.loads(card.read_text())["classes"])
    return None


def registry_uri(ref: str) -> str:
    """The tracking store a `models:/` URI is read from (`tracking_uri`), whose SQLite file
    must exist: an absent one would be created empty and the name reported missing."""
    from ferpipe.store import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise FileNotFoundError(f"{ref}: no MLflow database at {uri[len('sqlite:///'):]}; run "
                                "from the repo root, set MLFLOW_TRACKING_URI, or serve the "
                                "release (no --model)")
    return uri


def _load_registry(ref: str) -> Classifier:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` from the MLflow registry: a Keras model,
    or a pyfunc whose artifacts hold a .keras file and classes.json (ferpipe.web.pyfunc)."""
    import os

    try:
        import mlflow
    except ImportError:
        raise ModelError(f"{ref}: loading from the MLflow registry needs mlflow "
                         "(pip install 'ferpipe[serve]')") from None

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr stays for errors
    uri = registry_uri(ref)
    mlflow.set_tracking_uri(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(ref))
    except Exception as err:  # MlflowException for unknown names/aliases, OSError for storage
        raise ModelError(f"{ref}: cannot fetch from the MLflow registry at {uri} "
                         f"({str(err).splitlines()[0][:200]})") from err
    onnx_files = sorted(local.rglob("*.onnx"))
    if onnx_files:
        return OnnxClassifier(onnx_files[0])
    keras_files = sorted(local.rglob("*.keras"))
    classes_file = next(iter(sorted(local.rglob("classes.json"))), None)
    import_tf(ref)
    if keras_files:
        model = load_keras(keras_files[0])
        source = f"{ref} ({keras_files[0].name})"
    else:
        import mlflow.keras

        try:
            model = mlflow.keras.load_model(ref)
        except Exception as err:
            raise ModelError(f"{ref}: not a Keras model ({str(err).splitlines()[0][:200]})") from err
        source = ref
    if classes_file is None:
        raise ModelError(f"{ref}: no class names (no classes.json in the model)")
    return KerasClassifier(model, json.loads(classes_file.read_text()), source)


def load_classifier(ref: str | None = None) -> Classifier:
    """The release (default, model.onnx), a .onnx or .keras path, or `models:/name@alias`."""
    if ref and ref.startswith("models:/"):
        return _load_registry(ref)
    path = Path(ref) if ref else release_path()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file (pass --model PATH.onnx|.keras or "
                                "--model models:/fer-emotion@champion)")
    if path.is_file() and path.suffix == ".onnx":
        return OnnxClassifier(path)
    if path.is_dir() or path.suffix not in (".keras", ".h5"):
        raise ModelError(f"{path}: not a .onnx or .keras model file")
    import_tf(str(path))
    model = load_keras(path)
    classes = _card_classes(path)
    if not classes:
        raise ModelError(f"{path}: no class names: put a model_card.json with 'classes' beside it")
    return KerasClassifier(model, classes, str(path))
