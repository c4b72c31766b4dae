"""ferpipe: facial-emotion recognition (happy, neutral, sad, surprise) for photos and videos.

    from ferpipe import EmotionRecognizer
    recognizer = EmotionRecognizer()            # the released model, inside the package
    faces = recognizer.analyze("photo.jpg")     # [Face(box, emotion, probabilities, found)]

Importing ferpipe has no side effects and loads nothing heavy; the model runs on ONNX Runtime
(TensorFlow only for a .keras model or Grad-CAM, the `tf` extra).
The training pipeline is ferpipe.pipeline, the command line ferpipe.cli.
"""
from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("ferpipe")
except PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["EmotionRecognizer", "Explanation", "Face", "FerpipeError", "Frame", "ImageError",
           "ModelError", "__version__"]
_WHERE = {"EmotionRecognizer": "ferpipe.recognizer", "Explanation": "ferpipe.recognizer",
          "Face": "ferpipe.recognizer", "Frame": "ferpipe.recognizer", "FerpipeError": "ferpipe.errors",
          "ImageError": "ferpipe.errors", "ModelError": "ferpipe.errors"}

if TYPE_CHECKING:
    from ferpipe.errors import FerpipeError, ImageError, ModelError
    from ferpipe.recognizer import EmotionRecognizer, Explanation, Face, Frame


def __getattr__(name: str) -> Any:
    # Lazy, so `import ferpipe` (and `ferpipe --help`) does not pay for OpenCV and NumPy.
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'ferpipe' has no attribute {name!r}")
