"""Whether turning each detected face so its eyes are level helps, judged on ExpW's validation
split: the same faces cut from the raw pictures with and without alignment, scored by trained
models (no retraining: what alignment at use alone buys each of them).

    nice uv run python bench/alignment.py [MODEL ...]   # default: finetuned tuned
    nice uv run python bench/alignment.py --retrain      # params finetune on aligned ExpW faces

`--retrain` cuts ExpW's training and validation faces aligned into a scratch copy of
data/prepared and runs params `finetune` there (the levers bench's recipe, its MLflow
experiment), scoring each source's validation split: what alignment buys at training and at
use alike. Only validation faces are judged. Appends to logs/alignment.jsonl.
"""
from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SOURCE = "expw"


def main() -> None:
    from ferpipe.modelio import load_keras
    from ferpipe.pipeline.config import load_section
    from ferpipe.pipeline.finetune import split_scores
    from ferpipe.pipeline.framing import detect_and_crop
    from ferpipe.pipeline.models import predict_probs
    from ferpipe.pipeline.params import PrepareParams

    params = load_section("prepare", PrepareParams)
    manifest = pd.read_csv(f"data/prepared/{SOURCE}/manifest.csv")
    classes = list(params.classes)
    with zipfile.ZipFile(params.sources[SOURCE].source) as archive:
        def faces(part: pd.DataFrame, align: bool) -> np.ndarray:
            return np.stack([detect_and_crop(archive.read(name), params.image_px,
                                             int(params.max_image_megapixels * 1e6), align)[0]
                             for name in part.source])
        if sys.argv[1:] == ["--retrain"]:
            return retrain(manifest, classes, faces)
        val = manifest[manifest.split == "val"]
        x = {align: faces(val, align) for align in (False, True)}
    y = val.label.map(classes.index).to_numpy()
    changed = float(np.mean([np.abs(a.astype(int) - b).mean() > 0 for a, b in zip(x[False], x[True])]))
    for name in sys.argv[1:] or ["finetuned", "tuned"]:
        model = load_keras(Path("models/trained") / name / "model.keras")
        row = {"model": name, "faces": len(y), "share_turned": round(changed, 3)}
        for align in (False, True):
            probs = predict_probs(model, x[align], 256)
            flip = (probs + predict_probs(model, x[align][:, :, ::-1].copy(), 256)) / 2
            for tta, p in (("none", probs), ("flip", flip)):
                s = split_scores(y, p.argmax(1), classes)
                row[f"{'aligned' if align else 'plain'}_{tta}"] = {
                    "accuracy": round(s["accuracy"], 4), "macro_f1": round(s["macro_f1"], 4)}
        record(row)


def record(row: dict) -> None:
    print(json.dumps(row), flush=True)
    with Path("logs/alignment.jsonl").open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def retrain(manifest: pd.DataFrame, classes: list[str], faces) -> None:
    import tempfile
    import time

    import mlflow

    from ferpipe.files import write_npz
    from ferpipe.pipeline.config import load_section
    from ferpipe.pipeline.finetune import finetune, per_source_val
    from ferpipe.pipeline.params import FinetuneConfig, TrainConfig
    from ferpipe.pipeline.tracking import flatten, use_tracking
    from ferpipe.pipeline.train import set_determinism

    cfg, train_cfg = load_section("finetune", FinetuneConfig), load_section("train", TrainConfig)
    scratch = Path(tempfile.mkdtemp(prefix="aligned_"))
    for other in Path("data/prepared").iterdir():
        if other.is_dir() and other.name != SOURCE:
            (scratch / other.name).symlink_to(other.resolve())
    (scratch / SOURCE).mkdir()
    for split in ("train", "val"):
        part = manifest[manifest.split == split]
        write_npz(scratch / SOURCE / f"{split}.npz", x=faces(part, True),
                  y=part.label.map(classes.index).to_numpy(), classes=np.array(classes))
    set_determinism(train_cfg.seed, train_cfg.mixed_precision)
    use_tracking()
    mlflow.set_experiment("finetune-levers")
    start = time.perf_counter()
    with mlflow.start_run(run_name="aligned_expw", tags={"bench": "alignment"}):
        mlflow.log_params(flatten({"finetune": cfg.model_dump()}))
        model, result, drawn = finetune(cfg, train_cfg, scratch, Path("models/trained") / cfg.base / "model.keras")
        scores = per_source_val(model, scratch, sorted(cfg.mix), 256)
        mlflow.log_metrics({f"val_{s}_{k}": v for s, part in scores.items() for k, v in part.items()})
    row = {"variant": "aligned_expw (params finetune)", "val": scores, "epochs_run": result["epochs_run"],
           "best_epoch": result["best_epoch"], "minutes": round((time.perf_counter() - start) / 60, 1)}
    record(row)


if __name__ == "__main__":
    main()
