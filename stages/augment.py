"""Stage `augment`: materialise augmented copies of the training split, plus a preview."""
from pathlib import Path

import mlflow

from ferpipe.augment import AugmentConfig, augment
from ferpipe.config import load_section, run_main
from ferpipe.tracking import stage_run

PREPARED = Path("data/prepared")
OUT_DIR = Path("data/augmented")
PREVIEW = Path("plots/augment_preview.png")


def main() -> None:
    cfg = load_section("augment", AugmentConfig)
    with stage_run("augment", vars(cfg), PREPARED):
        counts = augment(cfg, PREPARED, OUT_DIR, PREVIEW)
        mlflow.log_metrics(counts)
        mlflow.log_artifact(str(PREVIEW))
    print(f"augment: {counts}")


if __name__ == "__main__":
    run_main(main)
