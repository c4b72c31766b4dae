"""Stage `tune`: Keras Tuner search over the best baseline's recipe, then retrain the winner if its
lead over the baseline's own trial is beyond validation noise (else the baseline's model is kept).

Distributed: run this same script on every machine with KERASTUNER_TUNER_ID=chief (one,
via `dvc repro tune`) or worker<N>, plus KERASTUNER_ORACLE_IP/_PORT naming the chief.
"""
import json
import os
import shutil
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

    from ferpipe.files import write_json
    from ferpipe.pipeline.models import build_cnn
    from ferpipe.pipeline.tracking import data_version, stage_run, use_tracking
    from ferpipe.pipeline.train import (
        AUGMENTED_DIR,
        PREPARED_DIR,
        Phase,
        fit,
        load_train_data,
        output_paths,
        set_determinism,
        write_outputs,
    )
    from ferpipe.pipeline.tune import (
        close_stale_trials,
        find_parent_run,
        is_worker,
        make_tuner,
        recipe,
        retrain_winner,
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
        os.environ["MLFLOW_RUN_ID"] = resumed
        print(f"tune: resuming search {project}; closed {close_stale_trials(resumed)} stale trial runs")
    params = {"tune": cfg.model_dump(), "train": train_cfg.model_dump(), "baseline": base.model_dump()}
    with stage_run("tune", params, AUGMENTED_DIR, tags={"search_id": project}) as run:
        os.environ.pop("MLFLOW_RUN_ID", None)  # else child runs would reopen the parent
        search = tuner(run.info.run_id)
        search.search(data=search_data, epochs=cfg.max_epochs)
        summary = summarize(search)
        mlflow.set_tags({"search_id": project, "best_trial_id": summary["best_trial_id"]})
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        mlflow.log_dict(summary, "search_summary.json")

        # The winner is retrained with the baseline's own budget (its epochs, the full set),
        # if it beat the baseline's own trial by more than noise; else the baseline's recipe stays.
        retrain, reason = retrain_winner(summary, cfg.objective, len(search_data.y_val))
        chosen = search.get_best_hyperparameters(1)[0] if retrain else search.oracle.hyperparameters.copy()
        spec, optimizer = search.hypermodel.spec(chosen, base.epochs)
        final_cfg = train_cfg.model_copy(update={"optimizer": optimizer})
        baseline_paths = output_paths(cfg.baseline)
        mlflow.set_tag("winner_decision", reason)
        print(f"tune: {reason}")
        if not retrain and baseline_paths["model_path"].exists():
            # Same spec, same train params, same seed: training is deterministic, so a retrain
            # would give these very bytes; reuse them instead of spending the baseline's budget.
            shutil.copyfile(baseline_paths["model_path"], output_paths("tuned")["model_path"])
            metrics = {**json.loads(baseline_paths["metrics_path"].read_text()), "model": "tuned"}
            write_json(output_paths("tuned")["metrics_path"], metrics)
            for key in ("history_path", "timing_path"):
                shutil.copyfile(baseline_paths[key], output_paths("tuned")[key])
            mlflow.set_tag("retrained", f"no: {cfg.baseline}'s own recipe is kept, its model reused")
        else:
            set_determinism(train_cfg.seed, train_cfg.mixed_precision)
            model = build_cnn(spec, num_classes, name="tuned")
            data = load_train_data(AUGMENTED_DIR, PREPARED_DIR, train_cfg.max_train_images,
                                   train_cfg.seed)
            result = fit(model, data, final_cfg, [Phase.for_spec("final", spec)])
            metrics = write_outputs(model, result, "tuned", **output_paths("tuned"))
        # The tuned model's own recipe (the release's model card cites it), not always the winner's.
        write_json(BEST_HPARAMS, {"search_id": project, "baseline": cfg.baseline, **recipe(chosen)})
        mlflow.log_artifact(str(BEST_HPARAMS))
        baseline_val = json.loads(baseline_paths["metrics_path"].read_text())["val_accuracy"] \
            if baseline_paths["metrics_path"].exists() else None
        write_json(SUMMARY, {**{k: v for k, v in summary.items() if k != "best_hyperparameters"},
                             "winner_retrained": retrain,
                             "tuned_val_accuracy": metrics["val_accuracy"],
                             "tuned_val_loss": metrics["val_loss"],
                             "baseline_val_accuracy": baseline_val})
    print(f"tune: {summary['trials_completed']}/{summary['trials_total']} trials; "
          f"best {summary['best_hyperparameters']}; tuned val_accuracy={metrics['val_accuracy']:.4f} "
          f"(baseline {cfg.baseline}: {baseline_val})")


if __name__ == "__main__":
    run_main(main)
