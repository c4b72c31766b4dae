"""Stage `evaluate`: score every trained model on each source's validation and test split, pick
the champion on validation (mean over sources), register it."""
import json
from pathlib import Path

from ferpipe.pipeline.config import load_section, run_main
from ferpipe.pipeline.params import EvaluateConfig

PREPARED = Path("data/prepared")
MODELS = Path("models/trained")
TRAIN_METRICS = Path("metrics/train")
METRICS = Path("metrics/evaluate.json")
TABLE = Path("metrics/models.csv")
PLOTS = Path("plots")
TIMING = Path("reports/timing/evaluate.json")
GRADCAM = PLOTS / "gradcam.png"


def main() -> None:
    cfg = load_section("evaluate", EvaluateConfig)
    # Imported only now: TensorFlow takes ~10 s to load, and a params mistake is reported at once.
    import mlflow

    from ferpipe.files import load_split
    from ferpipe.pipeline.evaluate import (
        SELECTION,
        choose_champion,
        evaluate_model,
        flat_row,
        gradcam_grid,
        load_candidate,
        text_report,
        trained_sources,
        write_reports,
    )
    from ferpipe.pipeline.registry import register_champion
    from ferpipe.pipeline.tracking import data_version, stage_run
    from ferpipe.web.pyfunc import log_pyfunc

    sources, classes = {}, None
    for folder in sorted(p.parent for p in PREPARED.glob("*/val.npz")):
        x_val, y_val, classes = load_split(folder, "val")
        x_test, y_test, _ = load_split(folder, "test")
        sources[folder.name] = {"val": (x_val, y_val), "test": (x_test, y_test)}
    if not sources:
        raise FileNotFoundError(f"{PREPARED}: no prepared sources (*/val.npz); run `dvc repro prepare`")
    y_tests = {s: splits["test"][1] for s, splits in sources.items()}
    x_test, y_test = next(iter(sources.values()))["test"]  # the Grad-CAM grid's faces
    paths = sorted(MODELS.glob("*/model.keras"))
    if not paths:
        raise FileNotFoundError(f"{MODELS}: no trained models (*/model.keras); run `dvc repro` first")

    with stage_run("evaluate", cfg.model_dump(), PREPARED):
        results, rows = {}, {}
        for path in paths:
            for name, result in evaluate_model(path, sources, classes, cfg).items():
                results[name] = result
                rows[name] = row = flat_row(name, result)
                with mlflow.start_run(run_name=f"eval_{name}", nested=True,
                                      tags={"stage": "evaluate", "model_name": result["model"],
                                            "tta": result["tta"]}):
                    mlflow.log_metrics({k: v for k, v in row.items() if k not in ("model", "tta")}
                                       | {"latency_ms": result["latency_ms"]})
                print(f"evaluate: {row}")
        champion = choose_champion(list(rows.values()), cfg.selection_metric)
        trained_on = {p.parent.name: trained_sources(json.loads((TRAIN_METRICS / f"{p.parent.name}.json")
                                                                 .read_text())) for p in paths}
        summary = write_reports(results, list(rows.values()), champion, cfg, classes, y_tests,
                                METRICS, TABLE, PLOTS, TIMING, trained_on)
        mlflow.log_metrics({f"unseen_{src}_{k}": v for src, part in summary["unseen"].items()
                            for k, v in part.items() if k != "model"})
        mlflow.log_metrics({f"champion_{s}_{k}": v for s in ("val", "test")
                            for k, v in summary[s].items() if isinstance(v, float)}
                           | {f"champion_{src}_{s}_{k}": v for src, part in summary["sources"].items()
                              for s in ("val", "test") for k, v in part[s].items()
                              if isinstance(v, float)})
        mlflow.set_tag("champion", champion)
        mlflow.log_artifact(str(TABLE))

        with mlflow.start_run(run_name=f"champion_{champion}", nested=True,
                              tags={"stage": "evaluate", "model_name": champion, "champion": "true"}):
            mlflow.log_artifact(str(PLOTS / "champion_confusion.png"))  # drawn by write_reports
            for source, splits in sources.items():
                for split, (_, y) in splits.items():
                    mlflow.log_text(text_report(y, results[champion]["pred"][f"{source}/{split}"],
                                                classes), f"classification_report_{source}_{split}.txt")
            model = load_candidate(MODELS, summary["champion_model"], summary["champion_tta"])
            gradcam_grid(model, x_test, y_test, classes, GRADCAM)
            mlflow.log_artifact(str(GRADCAM))
            # Registered as a pyfunc: batches of faces or whole photos (detection inside).
            info = log_pyfunc(model, classes, example_face=x_test[0])
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
