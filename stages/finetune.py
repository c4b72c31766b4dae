"""Stage `finetune`: continue training a trained model on the mix of sources in params
`finetune` (e.g. FER2013 with the real photos, capped per class), logged to MLflow.
`finetune.py SOURCE` (stage `finetune_without@SOURCE`) trains the same recipe without SOURCE."""
import sys
from pathlib import Path

from ferpipe.pipeline.config import PipelineError, load_section, run_main
from ferpipe.pipeline.params import HELD_OUT_PREFIX, FinetuneConfig, TrainConfig

PREPARED = Path("data/prepared")


def main() -> None:
    cfg = load_section("finetune", FinetuneConfig)
    held_out = sys.argv[1] if len(sys.argv) > 1 else ""
    name = HELD_OUT_PREFIX + held_out if held_out else "finetuned"
    if held_out and held_out not in cfg.held_out:
        raise PipelineError(f"'{held_out}' is not in params finetune.held_out ({cfg.held_out})")
    if held_out:
        cfg = cfg.without(held_out)
    train_cfg = load_section("train", TrainConfig)
    base = Path("models/trained") / cfg.base / "model.keras"
    if not base.is_file():  # before TensorFlow and MLflow start
        raise FileNotFoundError(f"{base}: no trained model '{cfg.base}' (params finetune.base); "
                                "run `dvc repro` for it first")
    for source in cfg.mix:
        if not (PREPARED / source / "train.npz").is_file():
            raise FileNotFoundError(f"{PREPARED / source}: no prepared source '{source}' (params "
                                    "finetune.mix); add it to prepare.sources")
    # Imported only now: TensorFlow takes ~10 s to load, and a params mistake is reported at once.
    import mlflow

    from ferpipe.pipeline.finetune import finetune, per_source_val
    from ferpipe.pipeline.tracking import flatten, stage_run, use_tracking
    from ferpipe.pipeline.train import output_paths, set_determinism, write_outputs

    set_determinism(train_cfg.seed, train_cfg.mixed_precision)
    use_tracking()
    params = {"model_name": name, "finetune": cfg.model_dump(), "train": train_cfg.model_dump()}
    stage = "finetune_without" if held_out else "finetune"
    with stage_run(stage, params, PREPARED, run_name=name, tags={"model_name": name,
                                                                  "base_model": cfg.base}):
        model, result, drawn = finetune(cfg, train_cfg, PREPARED, base, name)
        mlflow.log_metrics({f"drawn_{k}": v for k, v in flatten(drawn).items()})
        result["drawn"] = drawn
        result["val_sources"] = per_source_val(model, PREPARED, list(cfg.mix), 256)
        mlflow.log_metrics({f"val_{k.replace('.', '_')}": v
                            for k, v in flatten(result["val_sources"]).items()})
        metrics = write_outputs(model, result, name, **output_paths(name))
    print(f"{name}: from {cfg.base}, drawn {drawn}; validation {result['val_sources']}; "
          f"wall={metrics['wall_seconds']}s")


if __name__ == "__main__":
    run_main(main)
