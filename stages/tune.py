"""Stage `tune`: Keras Tuner search (resumable, distributable), then retrain the best.

Distributed: run this same script on every machine with KERASTUNER_TUNER_ID=chief (one,
via `dvc repro tune`) or worker<N>, plus KERASTUNER_ORACLE_IP/_PORT naming the chief.
"""
import dataclasses
import os
from pathlib import Path

import mlflow

from ferpipe.config import load_section, run_main
from ferpipe.files import write_json
from ferpipe.models import build_cnn
from ferpipe.tracking import data_version, stage_run, use_tracking
from ferpipe.train import (AUGMENTED_DIR, PREPARED_DIR, Phase, TrainConfig, fit, load_train_data,
                           output_paths, set_determinism, write_outputs)
from ferpipe.tune import (TuneConfig, close_stale_trials, find_parent_run, is_worker, make_tuner,
                          search_id, spec_from_hp, summarize)

TUNER_DIR = Path("tuning")
BEST_HPARAMS = Path("models/trained/tuned/best_hyperparameters.json")
SUMMARY = Path("metrics/tune.json")


def main() -> None:
    cfg = load_section("tune", TuneConfig)
    train_cfg = load_section("train", TrainConfig)
    set_determinism(train_cfg.seed, train_cfg.mixed_precision)
    project = search_id(cfg, train_cfg, data_version(AUGMENTED_DIR))
    use_tracking()
    search_data = load_train_data(AUGMENTED_DIR, PREPARED_DIR, cfg.search_train_images, cfg.seed)
    num_classes = len(search_data.classes)

    if is_worker():
        parent = find_parent_run(project, unfinished_only=True, wait_seconds=180)
        if parent is None:
            raise ValueError(f"no running tune run for search '{project}': start the chief first")
        make_tuner(cfg, train_cfg, num_classes, TUNER_DIR, project, parent).search(data=search_data)
        print(f"tune worker {os.environ['KERASTUNER_TUNER_ID']}: no trials left")
        return

    resumed = find_parent_run(project, unfinished_only=True)
    if resumed:  # an interrupted search: reopen its parent run so all trials sit under one
        os.environ["MLFLOW_RUN_ID"] = resumed
        print(f"tune: resuming search {project}; closed {close_stale_trials(resumed)} stale trial runs")
    params = {"tune": dataclasses.asdict(cfg), "train": vars(train_cfg)}
    with stage_run("tune", params, AUGMENTED_DIR, tags={"search_id": project}) as run:
        os.environ.pop("MLFLOW_RUN_ID", None)  # else child runs would reopen the parent
        tuner = make_tuner(cfg, train_cfg, num_classes, TUNER_DIR, project, run.info.run_id)
        tuner.search(data=search_data)
        summary = summarize(tuner)
        mlflow.set_tags({"search_id": project, "best_trial_id": summary["best_trial_id"]})
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        mlflow.log_dict(summary, "search_summary.json")

        best = tuner.get_best_hyperparameters(1)[0]
        spec, optimizer = spec_from_hp(best, cfg.space, cfg.final_epochs)
        set_determinism(train_cfg.seed, train_cfg.mixed_precision)
        model = build_cnn(spec, num_classes, name="tuned")
        data = load_train_data(AUGMENTED_DIR, PREPARED_DIR, train_cfg.max_train_images, train_cfg.seed)
        result = fit(model, data, dataclasses.replace(train_cfg, optimizer=optimizer),
                     [Phase("final", cfg.final_epochs, spec.learning_rate)])
        metrics = write_outputs(model, result, "tuned", **output_paths("tuned"))
        write_json(BEST_HPARAMS, {"search_id": project, **summary["best_hyperparameters"],
                                  "optimizer": optimizer})
        mlflow.log_artifact(str(BEST_HPARAMS))
        write_json(SUMMARY, {**{k: v for k, v in summary.items() if k != "best_hyperparameters"},
                             "tuned_val_accuracy": metrics["val_accuracy"],
                             "tuned_val_loss": metrics["val_loss"]})
    print(f"tune: {summary['trials_completed']}/{summary['trials_total']} trials; "
          f"best {summary['best_hyperparameters']}; retrained val_accuracy={metrics['val_accuracy']:.4f}")


if __name__ == "__main__":
    run_main(main)
