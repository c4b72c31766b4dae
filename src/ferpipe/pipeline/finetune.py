"""Fine-tuning a trained model on a mix of prepared sources (params `finetune`).

The mix is declared per source: a per-class cap (a seeded draw) and a repeat factor, so a
source dominated by two classes can be added without moving the class priors. The kept epoch
is chosen on the sources' validation splits together; `evaluate` judges each source apart.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ferpipe.files import load_split
from ferpipe.pipeline.config import PipelineError
from ferpipe.pipeline.params import FinetuneConfig, SourceMix, TrainConfig


def mix_sources(prepared_dir: Path, mix: dict[str, SourceMix], seed: int
                ) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, dict[str, int]], np.ndarray]:
    """(x uint8 [N, H, W], y [N], classes, images drawn per source and class, each image's
    source as its index in `mix`) of the training mix."""
    rng = np.random.default_rng(seed)
    xs, ys, origins, drawn, classes = [], [], [], {}, None
    for number, (name, spec) in enumerate(mix.items()):
        if not (prepared_dir / name / "train.npz").is_file():
            raise FileNotFoundError(f"{prepared_dir / name}: no prepared source '{name}' (params "
                                    "finetune.mix names it; add it to prepare.sources)")
        x, y, source_classes = load_split(prepared_dir / name, "train")
        if classes is not None and source_classes != classes:
            raise PipelineError(f"source '{name}': classes {source_classes} differ from {classes}")
        classes = source_classes
        keep = []
        for k in range(len(classes)):
            idx = np.flatnonzero(y == k)
            if spec.per_class_cap and len(idx) > spec.per_class_cap:
                idx = np.sort(rng.choice(idx, spec.per_class_cap, replace=False))
            keep.append(idx)
        keep = np.concatenate(keep)
        drawn[name] = {c: int((y[keep] == k).sum()) * spec.repeat for k, c in enumerate(classes)}
        xs.append(np.repeat(x[keep], spec.repeat, axis=0))
        ys.append(np.repeat(y[keep], spec.repeat, axis=0))
        origins.append(np.full(len(keep) * spec.repeat, number, np.int16))
    return (np.concatenate(xs), np.concatenate(ys), list(classes or []), drawn,
            np.concatenate(origins))


def distilled_targets(model: object, x: np.ndarray, y: np.ndarray, origin: np.ndarray,
                      shares: list[float], batch_size: int) -> np.ndarray:
    """Soft targets [N, k]: each image's one-hot label, mixed with `model`'s probabilities on
    it by its source's share (shares[origin]); the model runs only on images with a share."""
    from ferpipe.pipeline.models import predict_probs

    k = int(model.output_shape[-1])
    targets = np.eye(k, dtype=np.float32)[y]
    share = np.asarray(shares, np.float32)[origin]
    rows = np.flatnonzero(share > 0)
    if len(rows):
        teacher = predict_probs(model, x[rows], batch_size).astype(np.float32)
        targets[rows] = (1 - share[rows, None]) * targets[rows] + share[rows, None] * teacher
    return targets


def validation_mix(prepared_dir: Path, sources: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every listed source's validation split, one after the other."""
    parts = [load_split(prepared_dir / name, "val")[:2] for name in sources]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def finetune(cfg: FinetuneConfig, train_cfg: TrainConfig, prepared_dir: Path, base_model: Path,
             name: str = "finetuned") -> tuple[object, dict, dict]:
    """(model, fit result, drawn counts): `base_model` trained on the mix for cfg.epochs."""
    from ferpipe.modelio import load_keras
    from ferpipe.pipeline.train import Phase, TrainData, fit

    x, y, classes, drawn, origin = mix_sources(prepared_dir, cfg.mix, cfg.seed)
    x_val, y_val = validation_mix(prepared_dir, list(cfg.mix))
    model = load_keras(base_model)
    shares = [spec.distill for spec in cfg.mix.values()]
    if any(shares):  # the base model's probabilities, before it changes
        y = distilled_targets(model, x, y, origin, shares, train_cfg.batch_size * 4)
    order = np.random.default_rng(cfg.seed).permutation(len(x))  # one array: the sources interleave
    data = TrainData(x[order][..., None], y[order], x_val[..., None], y_val, classes)
    phase = Phase(name, cfg.epochs, cfg.learning_rate, random_shift=cfg.random_shift,
                  mixup_alpha=cfg.mixup_alpha, random_zoom=cfg.random_zoom, degrade=cfg.degrade,
                  before=freeze_batchnorm if cfg.freeze_batchnorm else None,
                  ema_momentum=cfg.ema_momentum)  # the fine-tune's own, in place of train's
    return model, fit(model, data, train_cfg, [phase]), drawn


def freeze_batchnorm(model: object) -> None:
    """Every batch-norm layer frozen: in Keras 3 a non-trainable one also runs in inference
    mode, so its moving statistics stay the base model's (nested backbones included)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        elif getattr(layer, "layers", None):
            freeze_batchnorm(layer)


def split_scores(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict[str, float]:
    """{accuracy, macro_f1, recall_<class>...} of predicted class indices on one split."""
    from ferpipe.metrics import classification_metrics

    m = classification_metrics(y, pred, classes)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            **{f"recall_{c}": v["recall"] for c, v in m["per_class"].items()}}


def per_source_val(model: object, prepared_dir: Path, sources: list[str], batch_size: int) -> dict:
    """{source: {accuracy, macro_f1, recall_<class>...}} on each source's validation split (logged per run, so
    MLflow compares mixes source by source)."""
    from ferpipe.pipeline.models import predict_probs

    out = {}
    for name in sources:
        x, y, classes = load_split(prepared_dir / name, "val")
        out[name] = split_scores(y, predict_probs(model, x, batch_size).argmax(axis=1), classes)
    return out
