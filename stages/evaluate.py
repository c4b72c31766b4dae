"""Stage `evaluate`: score every trained model on each source's validation and test split, pick
the champion on validation (mean over sources), register it."""
from pathlib import Path

from ferpipe.pipeline.config import load_section, run_main
from ferpipe.pipeline.params import EvaluateConfig

PREPARED = Path("data/prepared")
MODELS = Path("models/trained")
TRAIN_METRICS = Path("metrics/train")  # which sources each model was trained on
OUT = {"metrics": Path("metrics/evaluate.json"), "table": Path("metrics/models.csv"), "plots": Path("plots"),
       "timing": Path("reports/timing/evaluate.json"), "gradcam": Path("plots/gradcam.png")}


def main() -> None:
    cfg = load_section("evaluate", EvaluateConfig)
    paths = sorted(MODELS.glob("*/model.keras"))
    if not paths:
        raise FileNotFoundError(f"{MODELS}: no trained models (*/model.keras); run `dvc repro` first")
    # Imported only now: TensorFlow takes ~10 s to load, and a params mistake is reported at once.
    from ferpipe.pipeline.champion import load_sources, register, score_models, summarize
    from ferpipe.pipeline.lineage import data_version
    from ferpipe.pipeline.tracking import stage_run

    sources, classes = load_sources(PREPARED)
    with stage_run("evaluate", cfg.model_dump(), PREPARED):
        results, rows = score_models(paths, sources, classes, cfg)
        summary = summarize(results, rows, sources, classes, cfg, TRAIN_METRICS, OUT)
        version, moved = register(summary, results, rows, sources, classes, cfg, MODELS, OUT,
                                  data_version(PREPARED))
    champion = summary["champion"]
    print(f"evaluate: champion {champion} ({cfg.selection_metric}={rows[champion][cfg.selection_metric]:.4f}); "
          f"registered {cfg.registered_model_name} v{version}; alias {'moved' if moved else 'kept'}")


if __name__ == "__main__":
    run_main(main)
