"""Stage `prepare`: grayscale 48x48 arrays + manifest + data report from the raw archive."""
from pathlib import Path

import mlflow

from ferpipe.config import load_section, run_main
from ferpipe.data import PrepareConfig, prepare
from ferpipe.tracking import flatten, stage_run

OUT_DIR = Path("data/prepared")
REPORT = Path("metrics/data.json")


def main() -> None:
    cfg = load_section("prepare", PrepareConfig)
    with stage_run("prepare", vars(cfg), cfg.source):
        report = prepare(cfg, OUT_DIR, REPORT)
        metrics = {"kept": report["kept"], "duplicate_groups": report["duplicate_groups"],
                   "conflicting_label_groups": report["conflicting_label_groups"],
                   **flatten({"dropped": report["dropped"], "counts": report["counts"]})}
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(REPORT))
        mlflow.log_artifact(str(OUT_DIR / "manifest.csv"))
    print(f"prepare: kept {report['kept']} images; counts {report['counts']}")


if __name__ == "__main__":
    run_main(main)
