"""The DVC pipeline: params, data, training, tuning, evaluation, release and tracking.

Uses the inference core (ferpipe.inference, ferpipe.detect, ...); the core never imports it.
Its modules import TensorFlow and MLflow, so the start-up noise settings come first.
"""
from ferpipe import quiet  # noqa: F401
