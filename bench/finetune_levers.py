"""Which mix of sources (and augmentation) a fine-tune should use, judged on each source's
validation split; one MLflow run per variant (experiment `finetune-levers`).

    nice uv run python bench/finetune_levers.py [--base MODEL.keras] [VARIANT ...]   # after `dvc repro tune`

Every variant starts from params `finetune.base` and changes only what its entry says (its
"train" entry overrides params `train` for that run); the table printed at the end (and
logs/finetune_levers.jsonl) is the evidence for params `finetune`.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from ferpipe.pipeline.config import from_dict, load_section
from ferpipe.pipeline.params import FinetuneConfig, SourceMix, TrainConfig

PREPARED = Path("data/prepared")
VARIANTS = {
    "fer_only": {"mix": {"fer2013": {}}},
    "append_all": {"mix": {"fer2013": {}, "real": {}}},
    "cap800": {"mix": {"fer2013": {}, "real": {"per_class_cap": 800}}},
    "cap800_zoom": {"mix": {"fer2013": {}, "real": {"per_class_cap": 800}}, "random_zoom": 0.15},
    "cap800_x2": {"mix": {"fer2013": {}, "real": {"per_class_cap": 800, "repeat": 2}}},
    "all_zoom": {"mix": {"fer2013": {}, "real": {}}, "random_zoom": 0.15},
    "all_x2": {"mix": {"fer2013": {}, "real": {"repeat": 2}}},
    "all_x2_mixup": {"mix": {"fer2013": {}, "real": {"repeat": 2}}, "mixup_alpha": 0.2},
    "all_x2_lr3e-5": {"mix": {"fer2013": {}, "real": {"repeat": 2}}, "learning_rate": 3e-5},
    "all_x2_distill": {"mix": {"fer2013": {"distill": 0.5}, "real": {"repeat": 2}}},
    "all_x2_distill_mixup": {"mix": {"fer2013": {"distill": 0.5}, "real": {"repeat": 2}},
                             "mixup_alpha": 0.2},
    "all_x3_lr3e-5": {"mix": {"fer2013": {}, "real": {"repeat": 3}}, "learning_rate": 3e-5},
    "all_x2_lr3e-5_5ep": {"mix": {"fer2013": {}, "real": {"repeat": 2}}, "learning_rate": 3e-5,
                          "epochs": 5},
    "all_x2_lr5e-5": {"mix": {"fer2013": {}, "real": {"repeat": 2}}, "learning_rate": 5e-5},
    "all_x2_frozen_bn": {"mix": {"fer2013": {}, "real": {"repeat": 2}}, "freeze_batchnorm": True},
    "all_x2_frozen_bn_lr3e-5": {"mix": {"fer2013": {}, "real": {"repeat": 2}},
                                "freeze_batchnorm": True, "learning_rate": 3e-5},
    "all_x2_ema0.995": {"mix": {"fer2013": {}, "real": {"repeat": 2}}, "ema_momentum": 0.995},
    "all_x2_ema0.99": {"mix": {"fer2013": {}, "real": {"repeat": 2}}, "ema_momentum": 0.99},
    "all_x2_ema0.99_5ep": {"mix": {"fer2013": {}, "real": {"repeat": 2}}, "ema_momentum": 0.99,
                           "epochs": 5},
    "all_5ep": {"mix": {"fer2013": {}, "real": {}}, "epochs": 5},
    # From the release (--base models/release/model.keras), as the everyday-photos probe did:
    # a control without expw, and expw in the mix.
    "all_x2_again": {"mix": {"fer2013": {}, "real": {"repeat": 2}}},
    "all_x2_expw_x2": {"mix": {"fer2013": {}, "real": {"repeat": 2}, "expw": {"repeat": 2}}},
    "all_x2_expw_x4": {"mix": {"fer2013": {}, "real": {"repeat": 2}, "expw": {"repeat": 4}}},
    "all_x2_degrade": {"mix": {"fer2013": {}, "real": {"repeat": 2}}, "degrade": 0.15},
    "all_x2_expw_x2_degrade": {"mix": {"fer2013": {}, "real": {"repeat": 2}, "expw": {"repeat": 2}},
                               "degrade": 0.15},
    # From the pipeline's base (tuned): a longer, larger ExpW dose, and a higher learning rate.
    "all_x2_expw_x4_6ep": {"mix": {"fer2013": {}, "real": {"repeat": 2}, "expw": {"repeat": 4}},
                           "epochs": 6},
    "all_x2_expw_x2_lr3e-4": {"mix": {"fer2013": {}, "real": {"repeat": 2}, "expw": {"repeat": 2}},
                              "learning_rate": 3e-4},
    "all_x2_expw_x2_degrade0.3": {"mix": {"fer2013": {}, "real": {"repeat": 2}, "expw": {"repeat": 2}},
                                  "degrade": 0.3},
    "all_x2_degrade0.3": {"mix": {"fer2013": {}, "real": {"repeat": 2}}, "degrade": 0.3},
    "all_x2_expw_x4_6ep_distill": {"mix": {"fer2013": {"distill": 0.5}, "real": {"repeat": 2},
                                           "expw": {"repeat": 4}}, "epochs": 6},
    "all_x2_zoom0.15": {"mix": {"fer2013": {}, "real": {"repeat": 2}}, "random_zoom": 0.15},
    "all_x2_expw_x2_ema0.99_5ep": {"mix": {"fer2013": {}, "real": {"repeat": 2}, "expw": {"repeat": 2}},
                                   "ema_momentum": 0.99, "epochs": 5},
    # The adopted recipe with each class weighted by the inverse of its share of the mix.
    "all_x2_expw_x4_6ep_distill_cw": {"mix": {"fer2013": {"distill": 0.5}, "real": {"repeat": 2},
                                              "expw": {"repeat": 4}}, "epochs": 6,
                                      "train": {"class_weights": True}},
    "cap800_zoom_5ep": {"mix": {"fer2013": {}, "real": {"per_class_cap": 800}}, "random_zoom": 0.15,
                        "epochs": 5},
}


def main() -> None:
    import mlflow

    from ferpipe.pipeline.finetune import finetune, per_source_val
    from ferpipe.pipeline.tracking import flatten, use_tracking
    from ferpipe.pipeline.train import set_determinism

    base_cfg = load_section("finetune", FinetuneConfig)
    train_cfg = load_section("train", TrainConfig)
    args = sys.argv[1:]
    base = Path("models/trained") / base_cfg.base / "model.keras"
    if args[:1] == ["--base"]:  # another starting model, e.g. the release
        base, args = Path(args[1]), args[2:]
    names = args or list(VARIANTS)
    sources = sorted(p.parent.name for p in PREPARED.glob("*/val.npz"))
    use_tracking()
    mlflow.set_experiment("finetune-levers")
    out = Path("logs/finetune_levers.jsonl")
    out.parent.mkdir(exist_ok=True)
    for name in names:
        raw = {**base_cfg.model_dump(exclude={"mix", "held_out"}),
               **{k: v for k, v in VARIANTS[name].items() if k not in ("mix", "train")}}
        cfg = from_dict(FinetuneConfig, {**raw, "mix": {s: from_dict(SourceMix, m, s).model_dump()
                                                        for s, m in VARIANTS[name]["mix"].items()}},
                        f"variant {name}")
        run_train = from_dict(TrainConfig, {**train_cfg.model_dump(), **VARIANTS[name].get("train", {})},
                              f"variant {name}: train")
        set_determinism(run_train.seed, run_train.mixed_precision)
        start = time.perf_counter()
        with mlflow.start_run(run_name=name, tags={"bench": "finetune_levers", "base_model": str(base)}):
            mlflow.log_params(flatten({"finetune": cfg.model_dump(), "train": VARIANTS[name].get("train", {})}))
            model, result, drawn = finetune(cfg, run_train, PREPARED, base, name)
            scores = per_source_val(model, PREPARED, sources, 256)
            mlflow.log_metrics({f"val_{s}_{k}": v for s, part in scores.items() for k, v in part.items()})
        row = {"variant": name, "val": scores, "drawn": drawn, "epochs_run": result["epochs_run"],
               "best_epoch": result["best_epoch"], "minutes": round((time.perf_counter() - start) / 60, 1)}
        with out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
