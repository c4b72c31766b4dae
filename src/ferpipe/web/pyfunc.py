"""The champion as an MLflow pyfunc: 48x48 faces or whole photos in, emotions and boxes out.

One request is a table with two optional columns; each row fills exactly one of them:
- `face`: a 48x48 grid of gray pixels 0..255 (an already cropped face), or
- `image`: the bytes of a photo (JPEG, PNG, ...), base64-encoded in JSON; faces are detected.

Each row answers `{"faces": [{"box": [x, y, w, h], "emotion": ..., "probabilities": {...}}]}`;
a `face` row has one entry whose box is the whole crop, a photo with no face an empty list.
A bad row is refused with MlflowException(INVALID_PARAMETER_VALUE), which MLflow's scoring
server answers with HTTP 400 and the message; any other exception would also be a 400, but
with a generic message, so every check a user can fail is made here first.
"""
from __future__ import annotations

import base64
import binascii
import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from ferpipe.errors import FerpipeError
from ferpipe.inference import IMAGE_PX
from ferpipe.web.guard import MAX_MESSAGE
from ferpipe.web.limits import MAX_PIXELS, MAX_REQUEST_PIXELS, MAX_ROWS, MAX_SECONDS

COLUMNS = ("image", "face")




def bad_input(message: str, code: int = INVALID_PARAMETER_VALUE) -> MlflowException:
    """An error the scoring server answers with 400 (or `code`'s status) and this message."""
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + f"... ({len(message)} characters)"
    return MlflowException(message, error_code=code)


def input_schema() -> Any:
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    # `image` is base64 text, not MLflow's binary type: MLflow converts a binary column row by
    # row and fails on the empty cells of face rows ("encoding without a string argument").
    return Schema([ColSpec(DataType.string, "image", required=False),
                   ColSpec(Array(Array(DataType.long)), "face", required=False)])


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, float) and np.isnan(value)


def _face_array(value: Any, row: int, px: int = IMAGE_PX) -> np.ndarray:
    try:
        face = np.asarray(value.tolist() if isinstance(value, np.ndarray) else value, dtype=np.float64)
    except (TypeError, ValueError):
        raise bad_input(f"row {row}: 'face' must be a {px}x{px} grid of numbers 0..255") from None
    if face.shape != (px, px):
        raise bad_input(f"row {row}: 'face' has shape {list(face.shape)}, expected "
                        f"[{px}, {px}] gray pixels (crop and resize faces first, "
                        "or send the photo as 'image')")
    if not np.isfinite(face).all() or face.min() < 0 or face.max() > 255:
        raise bad_input(f"row {row}: 'face' pixels must be in 0..255")
    return face.astype(np.uint8)


def _photo_bytes(value: Any, row: int) -> bytes:
    """A photo's encoded bytes, from the bytes themselves or from base64 text (str, or bytes
    where MLflow's `inputs` form leaves the text undecoded)."""
    from ferpipe.imageio import image_format

    if isinstance(value, str):
        value = value.encode("ascii", errors="replace")
    if not isinstance(value, bytes | bytearray) or len(value) == 0:
        # e.g. the `inputs` form, which MLflow turns into one row holding the whole list
        raise bad_input(f"row {row}: 'image' must be one photo's bytes, base64-encoded, per row: "
                        '{"dataframe_records": [{"image": "<base64>"}, ...]}')
    raw = bytes(value)
    if not image_format(raw):  # base64 text of the photo
        try:
            raw = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            pass
    if not image_format(raw):
        raise bad_input(f"row {row}: 'image' ({len(value)} bytes) does not decode as an image; "
                        "send a JPEG, PNG, BMP, GIF, TIFF or WebP file, base64-encoded")
    return raw


def _decode_image(raw: bytes, row: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A BGR image from a photo's bytes; what cannot be read is a 400 naming the row."""
    from ferpipe.imageio import load_image

    try:
        return load_image(raw, max_pixels=max_pixels)
    except FerpipeError as err:  # over the pixel limit, a broken header, a damaged image
        raise bad_input(f"row {row}: 'image': {str(err).split(': ', 1)[-1]}") from None


def _rows(model_input: Any) -> list[dict]:
    if isinstance(model_input, dict):
        model_input = pd.DataFrame({k: list(v) for k, v in model_input.items()})
    if not isinstance(model_input, pd.DataFrame):
        raise bad_input(f"expected a table with columns {list(COLUMNS)}, got {type(model_input).__name__}")
    # MLflow drops the columns the signature does not name, so a table of other columns arrives
    # as empty as an empty batch does.
    if len(model_input) == 0 or not set(model_input.columns) & set(COLUMNS):
        raise bad_input("empty batch, or no 'face' or 'image' column: send rows like "
                        '{"face": [[...48 pixels...], ...48 rows]} or {"image": "<base64 photo>"}')
    return model_input.to_dict(orient="records")


class FerEmotionModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: artifact `onnx_model` (the release's model.onnx, run by ONNX Runtime), or
    `keras_model` (a .keras file) with `classes` (a JSON list); model_config `max_pixels`."""

    def load_context(self, context: Any) -> None:
        from ferpipe.inference import KerasClassifier, OnnxClassifier, import_tf
        from ferpipe.recognizer import EmotionRecognizer

        if "onnx_model" in context.artifacts:
            self.classifier = OnnxClassifier(context.artifacts["onnx_model"])
        else:
            import_tf(context.artifacts["keras_model"])
            import keras

            path = context.artifacts["keras_model"]
            classes = json.loads(Path(context.artifacts["classes"]).read_text())
            self.classifier = KerasClassifier(keras.models.load_model(path, compile=False), classes, path)
        config = context.model_config or {}
        self.max_pixels = int(config.get("max_pixels", MAX_PIXELS))
        self.max_rows = int(config.get("max_rows", MAX_ROWS))
        self.max_request_pixels = int(config.get("max_request_pixels", MAX_REQUEST_PIXELS))
        self.max_seconds = float(config.get("max_seconds", MAX_SECONDS))
        self.recognizer = EmotionRecognizer(self.classifier, max_pixels=self.max_pixels)

    # A DataFrame hint: MLflow derives no schema from it (the signature is declared when the
    # model is saved) and hands the table over as it is; without a hint it warns at import.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> list[dict]:
        """One {"faces": [...]} per row (see the module docstring)."""
        import time

        from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED, REQUEST_LIMIT_EXCEEDED

        from ferpipe.imageio import header_size
        from ferpipe.recognizer import Face

        deadline = time.monotonic() + self.max_seconds
        rows = _rows(model_input)
        if len(rows) > self.max_rows:
            raise bad_input(f"{len(rows)} rows, over the limit of {self.max_rows} a request "
                            "(ferpipe serve --max-rows)", REQUEST_LIMIT_EXCEEDED)
        faces, photos = {}, {}
        pixels = 0
        for i, row in enumerate(rows):
            image, face = row.get("image"), row.get("face")
            if _is_missing(image) == _is_missing(face):
                raise bad_input(f"row {i}: give exactly one of 'face' (48x48 pixels) or 'image' (photo bytes)")
            if _is_missing(image):
                faces[i] = _face_array(face, i, self.classifier.image_px)
            else:
                photos[i] = _photo_bytes(image, i)  # decoded one at a time below
                width, height = header_size(photos[i]) or (0, 0)
                pixels += width * height
                if pixels > self.max_request_pixels:
                    raise bad_input(f"rows 0..{i}: {pixels / 1e6:.1f} megapixels of photos, over the "
                                    f"limit of {self.max_request_pixels / 1e6:g} a request (ferpipe serve "
                                    "--max-request-megapixels)", REQUEST_LIMIT_EXCEEDED)
        if faces and photos:
            raise bad_input(f"rows {min(faces)} and {min(photos)}: a batch holds either 'face' rows "
                            "or 'image' rows, not both; send them in two requests")
        out: list[dict] = [{"faces": []} for _ in rows]
        classes, px = self.classifier.classes, self.classifier.image_px
        if faces:
            probs = self.classifier.predict_proba(np.stack(list(faces.values())))
            for i, p in zip(faces, probs):
                face = Face((0, 0, px, px), classes[int(p.argmax())],
                            {c: float(v) for c, v in zip(classes, p)}, "whole_image")
                out[i]["faces"] = [face.to_dict()]  # as `ferpipe predict` prints faces
        for i, raw in photos.items():  # one photo decoded at a time: memory is one photo's
            if time.monotonic() > deadline:
                raise bad_input(f"row {i}: the request took over {self.max_seconds:g} s and was "
                                "stopped (ferpipe serve --max-request-seconds)", DEADLINE_EXCEEDED)
            image = _decode_image(raw, i, self.max_pixels)
            out[i]["faces"] = [face.to_dict() for face in self.recognizer.analyze(image)]
        return out


def example_input(face: np.ndarray | None = None) -> Any:
    """One photo row: a small PNG of `face`, base64 as a request carries it (the README shows
    the face form)."""
    import cv2
    face = np.full((IMAGE_PX, IMAGE_PX), 128, np.uint8) if face is None else np.asarray(face, np.uint8)
    ok, png = cv2.imencode(".png", cv2.resize(face, (96, 96), interpolation=cv2.INTER_CUBIC))
    return pd.DataFrame({"image": [base64.b64encode(png.tobytes()).decode()]})


def _pyfunc_spec(model: str | Path | Any, classes: list[str], tmp: Path,
                 example_face: np.ndarray | None, max_pixels: int = MAX_PIXELS) -> dict:
    """The arguments of mlflow.pyfunc.log_model / save_model for the pyfunc of `model`: a
    .onnx file (served on ONNX Runtime), a .keras file or a Keras model."""
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.pyfunc import PythonModelContext

    if isinstance(model, str | Path) and Path(model).suffix == ".onnx":
        import onnxruntime

        artifacts = {"onnx_model": str(model)}
        requirements = [f"onnxruntime=={onnxruntime.__version__}"]
    else:
        import keras
        import tensorflow as tf

        if isinstance(model, keras.Model):
            from ferpipe.modelio import save_model

            path = tmp / "model.keras"
            save_model(model, path)
        else:
            path = Path(model)
        classes_path = tmp / "classes.json"
        classes_path.write_text(json.dumps(list(classes)))
        artifacts = {"keras_model": str(path), "classes": str(classes_path)}
        requirements = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"]
    for path in artifacts.values():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such model file")
    config = {"max_pixels": int(max_pixels), "max_rows": MAX_ROWS,
              "max_request_pixels": MAX_REQUEST_PIXELS, "max_seconds": MAX_SECONDS}
    probe = FerEmotionModel()
    probe.load_context(PythonModelContext(artifacts=artifacts, model_config=config))
    px = probe.classifier.image_px
    face_row = pd.DataFrame({"face": [np.full((px, px), 128).tolist()]})
    output = infer_signature(None, probe.predict(None, face_row)).outputs
    return dict(python_model=str(Path(__file__).with_name("served_model.py")), artifacts=artifacts,
                model_config=config,
                signature=ModelSignature(inputs=input_schema(), outputs=output),
                input_example=example_input(example_face),
                # the core and this module, so it serves without ferpipe installed
                code_paths=[str(Path(__file__).resolve().parents[1])],
                pip_requirements=[f"mlflow=={mlflow.__version__}", *requirements,
                                  "opencv-python-headless<5", f"numpy=={np.__version__}", "pandas",
                                  "pillow"])


def log_pyfunc(keras_model: str | Path | Any, classes: list[str], name: str = "model",
               example_face: np.ndarray | None = None) -> Any:
    """Log the pyfunc to the active run (signature, input example, this package as code);
    returns its ModelInfo, whose `model_uri` is what the registry should register.

    `keras_model`: a .keras file, or a Keras model (saved here first, e.g. a champion wrapped
    for test-time augmentation). `example_face`: a 48x48 uint8 face for the input example."""
    with tempfile.TemporaryDirectory() as tmp:
        return mlflow.pyfunc.log_model(name=name, **_pyfunc_spec(keras_model, classes, Path(tmp),
                                                                  example_face))


def save_pyfunc(model: str | Path | Any, classes: list[str], dest: Path,
                example_face: np.ndarray | None = None, max_pixels: int = MAX_PIXELS) -> Path:
    """The same pyfunc saved to the folder `dest` (for `ferpipe serve` without a registry)."""
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.pyfunc.save_model(str(dest), **_pyfunc_spec(model, classes, Path(tmp), example_face,
                                                           max_pixels))
    return dest
