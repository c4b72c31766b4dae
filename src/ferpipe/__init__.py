"""ferpipe: a reproducible facial-emotion-recognition pipeline (DVC stages, Keras, MLflow)."""
# First, before any module of the package can import TensorFlow: its start-up noise settings.
from ferpipe import quiet  # noqa: F401
