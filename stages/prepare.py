"""Stage `prepare`: grayscale 48x48 arrays + manifest + data report from the raw archive."""
from pathlib import Path

from ferpipe.pipeline.config import load_section, run_main
from ferpipe.pipeline.data import PrepareConfig, prepare

OUT_DIR = Path("data/prepared")
REPORT = Path("metrics/data.json")


def main() -> None:
    cfg = load_section("prepare", PrepareConfig)
    # Imported only now: MLflow takes seconds to load, and a params mistake is reported at once.
    import mlflow

    from ferpipe.pipeline.tracking import flatten, stage_run

    with stage_run("prepare", vars(cfg), cfg.source):
        report = prepare(cfg, OUT_DIR, REPORT)
        metrics = {"kept": report["kept"], "duplicate_groups": report["duplicate_groups"],
                   "conflicting_label_groups": report["conflicting_label_groups"],
                   **flatten({"dropped": report["dropped"], "counts": report["counts"]})}
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(REPORT))
        mlflow.log_artifact(str(OUT_DIR / "manifest.csv"))
    print(f"prepare: kept {report['kept']} images; counts {report['counts']}")
    reasons = ", ".join(f"{n} {reason}" for reason, n in report["skipped_by_reason"].items())
    print(f"prepare: skipped {report['skipped_count']} files"
          + (f" ({reasons}), listed in {REPORT}" if reasons else ""))


if __name__ == "__main__":
    run_main(main)
