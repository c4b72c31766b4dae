"""Stage `prepare`: every source in params `prepare.sources` -> gray arrays split into
train/val/test, a manifest and a data report each (data/prepared/<source>/)."""
from pathlib import Path

from ferpipe.pipeline.config import load_section, run_main
from ferpipe.pipeline.data import PrepareParams, check_sources, prepare_all

OUT_DIR = Path("data/prepared")
REPORT = Path("metrics/data.json")


def main() -> None:
    cfg = load_section("prepare", PrepareParams)
    check_sources(cfg)  # before MLflow starts: a missing file is one line now
    # Imported only now: MLflow takes seconds to load, and a params mistake is reported at once.
    import mlflow

    from ferpipe.pipeline.tracking import flatten, stage_run

    sources = [spec.source for spec in cfg.sources.values()]
    with stage_run("prepare", flatten({"sources": {k: v.model_dump() for k, v in cfg.sources.items()}})
                   | cfg.model_dump(exclude={"sources"}), sources[0]):
        report = prepare_all(cfg, OUT_DIR, REPORT)
        metrics = {}
        for name, part in report["sources"].items():
            metrics |= {f"{name}_{k}": v for k, v in flatten(
                {"kept": part["kept"], "duplicate_groups": part["duplicate_groups"],
                 "dropped": part["dropped"], "counts": part["counts"]}).items()}
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(REPORT))
        for name in report["sources"]:
            mlflow.log_artifact(str(OUT_DIR / name / "manifest.csv"), artifact_path=name)
    for name, part in report["sources"].items():
        reasons = ", ".join(f"{n} {reason}" for reason, n in part["skipped_by_reason"].items())
        print(f"prepare: {name}: kept {part['kept']} images; counts {part['counts']}; skipped "
              f"{part['skipped_count']} files" + (f" ({reasons})" if reasons else ""))


if __name__ == "__main__":
    run_main(main)
