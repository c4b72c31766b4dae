"""Where MLflow runs and the model registry live: one default for the pipeline (which records
runs) and the core (which reads `models:/` URIs)."""
from __future__ import annotations

import os
from pathlib import Path


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite mlflow.db in the working directory (the repo
    root, where DVC runs the stages)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
