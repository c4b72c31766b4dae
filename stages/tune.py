"""Stage `tune`: Keras Tuner search over the best baseline's recipe, then retrain the winner if its
lead over the baseline's own trial is beyond validation noise (else the baseline's model is kept).

Distributed: run this same script on every machine with KERASTUNER_TUNER_ID=chief (one,
via `dvc repro tune`) or worker<N>, plus KERASTUNER_ORACLE_IP/_PORT naming the chief.
"""
import os
from pathlib import Path

from ferpipe.pipeline.config import PipelineError, load_entry, load_section, run_main
from ferpipe.pipeline.params import CNNSpec, TrainConfig, TuneConfig

TUNER_DIR = Path("tuning")
BEST_HPARAMS = Path("models/trained/tuned/best_hyperparameters.json")
SUMMARY = Path("metrics/tune.json")


def main() -> None:
    cfg = load_section("tune", TuneConfig)
    train_cfg = load_section("train", TrainConfig)
    base = load_entry("baselines", cfg.baseline, CNNSpec)
    # Imported only now: TensorFlow takes ~10 s to load, and a params mistake is reported at once.
    import mlflow

    from ferpipe.pipeline.lineage import data_version
    from ferpipe.pipeline.tracking import stage_run, use_tracking
    from ferpipe.pipeline.train import AUGMENTED_DIR, PREPARED_DIR, load_train_data, set_determinism
    from ferpipe.pipeline.tune import (
        close_stale_trials,
        find_parent_run,
        finish_search,
        is_worker,
        make_tuner,
        search_id,
        summarize,
    )

    set_determinism(train_cfg.seed, train_cfg.mixed_precision)
    project = search_id(cfg, train_cfg, base, data_version(AUGMENTED_DIR))
    use_tracking()
    search_data = load_train_data(AUGMENTED_DIR, PREPARED_DIR, cfg.search_train_images, cfg.seed)
    num_classes = len(search_data.classes)

    def tuner(parent_run_id: str):
        return make_tuner(cfg, train_cfg, base, num_classes, TUNER_DIR, project, parent_run_id)

    if is_worker():
        parent = find_parent_run(project, unfinished_only=True, wait_seconds=180)
        if parent is None:
            raise PipelineError(f"no running tune run for search '{project}': start the chief first")
        tuner(parent).search(data=search_data, epochs=cfg.max_epochs)
        print(f"tune worker {os.environ['KERASTUNER_TUNER_ID']}: no trials left")
        return

    resumed = find_parent_run(project, unfinished_only=True)
    if resumed:  # an interrupted search: reopen its parent run so all trials sit under one
        print(f"tune: resuming search {project}; closed {close_stale_trials(resumed)} stale trial runs")
    params = {"tune": cfg.model_dump(), "train": train_cfg.model_dump(), "baseline": base.model_dump()}
    with stage_run("tune", params, AUGMENTED_DIR, tags={"search_id": project},
                   resume_run_id=resumed) as run:
        search = tuner(run.info.run_id)
        search.search(data=search_data, epochs=cfg.max_epochs)
        summary = summarize(search)
        mlflow.set_tags({"search_id": project, "best_trial_id": summary["best_trial_id"]})
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        mlflow.log_dict(summary, "search_summary.json")
        result = finish_search(search, summary, cfg, train_cfg, base, project, len(search_data.y_val),
                               num_classes, BEST_HPARAMS, SUMMARY)
        mlflow.log_artifact(str(BEST_HPARAMS))
    print(f"tune: {summary['trials_completed']}/{summary['trials_total']} trials; "
          f"best {summary['best_hyperparameters']}; tuned val_accuracy={result['tuned_val_accuracy']:.4f} "
          f"(baseline {cfg.baseline}: {result['baseline_val_accuracy']})")


if __name__ == "__main__":
    run_main(main)
