"""MLflow Model Registry: register each evaluated champion; move the alias only on a win."""
from __future__ import annotations

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

ALIAS = "champion"


def is_better(new: float, old: float, higher_is_better: bool) -> bool:
    return new > old if higher_is_better else new < old


def register_champion(model_uri: str, name: str, metric: str, value: float, higher_is_better: bool,
                      data_version: str, model_name: str) -> tuple[str, bool]:
    """Register `model_uri` as a new version; point the alias at it if it beats the holder.

    A holder scored on other data (another data version) is not comparable, so it loses.
    Returns (new version, whether the alias moved)."""
    client = MlflowClient()
    try:
        client.create_registered_model(name, description="Facial-emotion classifier; "
                                       "the 'champion' alias marks the best on validation.")
    except MlflowException as err:
        if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(err):
            raise
    version = mlflow.register_model(model_uri, name, tags={
        metric: str(value), "data_version": data_version, "model_name": model_name}).version
    try:
        holder = client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        holder = None
    moved = (holder is None or holder.tags.get("data_version") != data_version
             or metric not in holder.tags
             or is_better(value, float(holder.tags[metric]), higher_is_better))
    if moved:
        client.set_registered_model_alias(name, ALIAS, version)
    return str(version), moved
