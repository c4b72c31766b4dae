"""Stage `augment`: materialise augmented copies of the training split, plus a preview."""
from pathlib import Path

from ferpipe.pipeline.augment import AugmentConfig, augment
from ferpipe.pipeline.config import load_section, run_main

PREPARED = Path("data/prepared/fer2013")  # augmented copies feed the FER2013-trained models
OUT_DIR = Path("data/augmented")
PREVIEW = Path("plots/augment_preview.png")


def main() -> None:
    cfg = load_section("augment", AugmentConfig)
    # Imported only now: MLflow takes seconds to load, and a params mistake is reported at once.
    import mlflow

    from ferpipe.pipeline.tracking import stage_run

    # The data version is prepare's tracked output (a folder inside it has no DVC md5 of its own).
    with stage_run("augment", cfg.model_dump(), PREPARED.parent):
        counts = augment(cfg, PREPARED, OUT_DIR, PREVIEW)
        mlflow.log_metrics(counts)
        mlflow.log_artifact(str(PREVIEW))
    print(f"augment: {counts}")


if __name__ == "__main__":
    run_main(main)
