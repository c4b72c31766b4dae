"""The evaluate stage's work, logged: every model scored on every source (a nested MLflow run
each), the champion chosen on validation, its reports written, and the champion registered."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow

from ferpipe.files import load_split
from ferpipe.pipeline.evaluate import (
    SELECTION,
    Splits,
    choose_champion,
    evaluate_model,
    flat_row,
    load_candidate,
    trained_sources,
)
from ferpipe.pipeline.params import EvaluateConfig
from ferpipe.pipeline.reports import gradcam_grid, text_report, write_reports


def load_sources(prepared: Path) -> tuple[Splits, list[str]]:
    """Every prepared source's val and test split, and the classes."""
    sources, classes = {}, []
    for folder in sorted(p.parent for p in prepared.glob("*/val.npz")):
        x_val, y_val, classes = load_split(folder, "val")
        x_test, y_test, _ = load_split(folder, "test")
        sources[folder.name] = {"val": (x_val, y_val), "test": (x_test, y_test)}
    if not sources:
        raise FileNotFoundError(f"{prepared}: no prepared sources (*/val.npz); run `dvc repro prepare`")
    return sources, classes


def score_models(paths: list[Path], sources: Splits, classes: list[str],
                 cfg: EvaluateConfig) -> tuple[dict, dict]:
    """(results, table rows) of every candidate (model x test-time variant), one nested run each."""
    results, rows = {}, {}
    for path in paths:
        for name, result in evaluate_model(path, sources, classes, cfg).items():
            results[name] = result
            rows[name] = row = flat_row(name, result)
            with mlflow.start_run(run_name=f"eval_{name}", nested=True,
                                  tags={"stage": "evaluate", "model_name": result["model"], "tta": result["tta"]}):
                mlflow.log_metrics({k: v for k, v in row.items() if k not in ("model", "tta")}
                                   | {"latency_ms": result["latency_ms"]})
            print(f"evaluate: {row}")
    return results, rows


def summarize(results: dict, rows: dict, sources: Splits, classes: list[str], cfg: EvaluateConfig,
              train_metrics: Path, out: dict[str, Path]) -> dict:
    """Choose the champion on validation, write every report, log the summary metrics."""
    champion = choose_champion(list(rows.values()), cfg.selection_metric)
    trained_on = {model: trained_sources(json.loads((train_metrics / f"{model}.json").read_text()))
                  for model in {r["model"] for r in results.values()}}  # once a model, not a variant
    summary = write_reports(results, list(rows.values()), champion, cfg, classes,
                            {s: splits["test"][1] for s, splits in sources.items()},
                            out["metrics"], out["table"], out["plots"], out["timing"], trained_on)
    mlflow.log_metrics({f"unseen_{src}_{k}": v for src, part in summary["unseen"].items()
                        for k, v in part.items() if k != "model"})
    mlflow.log_metrics({f"champion_{s}_{k}": v for s in ("val", "test")
                        for k, v in summary[s].items() if isinstance(v, float)}
                       | {f"champion_{src}_{s}_{k}": v for src, part in summary["sources"].items()
                          for s in ("val", "test") for k, v in part[s].items() if isinstance(v, float)})
    mlflow.set_tag("champion", champion)
    mlflow.log_artifact(str(out["table"]))
    return summary


def register(summary: dict, results: dict, rows: dict, sources: Splits, classes: list[str],
             cfg: EvaluateConfig, models_dir: Path, out: dict[str, Path], data_version: str) -> tuple[str, bool]:
    """The champion's own run: its reports, Grad-CAM grid and pyfunc, registered if it beats
    the registered one; returns (version, whether the alias moved)."""
    from ferpipe.pipeline.registry import register_champion
    from ferpipe.web.pyfunc import log_pyfunc

    champion = summary["champion"]
    x_test, y_test = next(iter(sources.values()))["test"]  # the Grad-CAM grid's faces
    with mlflow.start_run(run_name=f"champion_{champion}", nested=True,
                          tags={"stage": "evaluate", "model_name": champion, "champion": "true"}):
        mlflow.log_artifact(str(out["plots"] / "champion_confusion.png"))  # drawn by write_reports
        for source, splits in sources.items():
            for split, (_, y) in splits.items():
                mlflow.log_text(text_report(y, results[champion]["pred"][f"{source}/{split}"], classes),
                                f"classification_report_{source}_{split}.txt")
        model = load_candidate(models_dir, summary["champion_model"], summary["champion_tta"])
        gradcam_grid(model, x_test, y_test, classes, out["gradcam"])
        mlflow.log_artifact(str(out["gradcam"]))
        # Registered as a pyfunc: batches of faces or whole photos (detection inside).
        info = log_pyfunc(model, classes, example_face=x_test[0])
        version, moved = register_champion(info.model_uri, cfg.registered_model_name, cfg.selection_metric,
                                           rows[champion][cfg.selection_metric],
                                           SELECTION[cfg.selection_metric], data_version, champion)
        mlflow.set_tags({"registered_version": version, "alias_moved": str(moved).lower()})
    return version, moved
