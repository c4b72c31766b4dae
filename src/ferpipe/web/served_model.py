"""The pyfunc as an MLflow models-from-code file: MLflow saves and loads this file, not a
pickled object (which it warns may run arbitrary code on load)."""
import mlflow

from ferpipe.web.pyfunc import FerEmotionModel

mlflow.models.set_model(FerEmotionModel())
