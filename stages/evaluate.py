"""Stage `evaluate`: compare every trained model, pick the champion on validation, register it."""
from pathlib import Path

import mlflow

from ferpipe.config import load_section, run_main
from ferpipe.data import load_split
from ferpipe.evaluate import (SELECTION, EvaluateConfig, choose_champion, evaluate_model, flat_row,
                              text_report, write_reports)
from ferpipe.registry import register_champion
from ferpipe.tracking import data_version, log_keras_model, stage_run

PREPARED = Path("data/prepared")
MODELS = Path("models/trained")
METRICS = Path("metrics/evaluate.json")
TABLE = Path("metrics/models.csv")
PLOTS = Path("plots")


def main() -> None:
    cfg = load_section("evaluate", EvaluateConfig)
    x_val, y_val, classes = load_split(PREPARED, "val")
    x_test, y_test, _ = load_split(PREPARED, "test")
    splits = {"val": (x_val, y_val), "test": (x_test, y_test)}
    paths = sorted(MODELS.glob("*/model.keras"))
    if not paths:
        raise FileNotFoundError(f"{MODELS}: no trained models (*/model.keras); run `dvc repro` first")

    with stage_run("evaluate", vars(cfg), PREPARED):
        results, rows = {}, {}
        for path in paths:
            name = path.parent.name
            results[name] = evaluate_model(path, splits, classes, cfg)
            rows[name] = row = flat_row(name, results[name])
            with mlflow.start_run(run_name=f"eval_{name}", nested=True,
                                  tags={"stage": "evaluate", "model_name": name}):
                mlflow.log_metrics({k: v for k, v in row.items() if k != "model"})
            print(f"evaluate: {row}")
        champion = choose_champion(list(rows.values()), cfg.selection_metric)
        summary = write_reports(results, list(rows.values()), champion, cfg, classes, y_test,
                                METRICS, TABLE, PLOTS)
        mlflow.log_metrics({f"champion_{s}_{k}": v for s in ("val", "test")
                            for k, v in summary[s].items() if isinstance(v, float)})
        mlflow.set_tag("champion", champion)
        mlflow.log_artifact(str(TABLE))

        with mlflow.start_run(run_name=f"champion_{champion}", nested=True,
                              tags={"stage": "evaluate", "model_name": champion, "champion": "true"}):
            import keras

            mlflow.log_artifact(str(PLOTS / "champion_confusion.png"))  # drawn by write_reports
            mlflow.log_text(text_report(y_val, results[champion]["val_pred"], classes),
                            "classification_report_val.txt")
            mlflow.log_text(text_report(y_test, results[champion]["test_pred"], classes),
                            "classification_report_test.txt")
            model = keras.models.load_model(MODELS / champion / "model.keras")
            info = log_keras_model(model, x_test[:2, ..., None].astype("float32"))
            value = rows[champion][cfg.selection_metric]
            version, moved = register_champion(info.model_uri, cfg.registered_model_name,
                                               cfg.selection_metric, value,
                                               SELECTION[cfg.selection_metric],
                                               data_version(PREPARED), champion)
            mlflow.set_tags({"registered_version": version, "alias_moved": str(moved).lower()})
    print(f"evaluate: champion {champion} ({cfg.selection_metric}={value:.4f}); registered "
          f"{cfg.registered_model_name} v{version}; alias {'moved' if moved else 'kept'}")


if __name__ == "__main__":
    run_main(main)
