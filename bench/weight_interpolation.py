"""How far between the base model and the fine-tuned one the released weights should sit
(weight-space interpolation, as in WiSE-FT), judged on each source's validation split.

    nice uv run python bench/weight_interpolation.py [BASE] [FINETUNED]

alpha is the fine-tuned model's share: 0 is the base model, 1 the fine-tuned one. Only
validation splits are read; the table (and logs/weight_interpolation.jsonl) is the evidence
for how far a release should sit between the two (no param: alpha 1 is what `finetune` keeps).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np

PREPARED = Path("data/prepared")
ALPHAS = [0.0, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0]


def interpolate_weights(base: list[np.ndarray], tuned: list[np.ndarray], alpha: float
                        ) -> list[np.ndarray]:
    """Weights `alpha` of the way from `base` to `tuned` (WiSE-FT): a fine-tune keeps more of
    what the base model knew of the first source, at a cost on the new one that validation prices."""
    if len(base) != len(tuned) or any(b.shape != t.shape for b, t in zip(base, tuned)):
        raise ValueError("the base and fine-tuned models differ in architecture")
    return [(b + alpha * (t - b)).astype(t.dtype) if np.issubdtype(t.dtype, np.floating) else t
            for b, t in zip(base, tuned)]


def main() -> None:
    from ferpipe.modelio import load_keras
    from ferpipe.pipeline.finetune import per_source_val
    from source_rows import record

    base_path = Path(sys.argv[1] if len(sys.argv) > 1 else "models/trained/tuned/model.keras")
    tuned_path = Path(sys.argv[2] if len(sys.argv) > 2 else "models/trained/finetuned/model.keras")
    base, model = load_keras(base_path), load_keras(tuned_path)
    base_weights, tuned_weights = base.get_weights(), model.get_weights()
    for alpha in ALPHAS:
        model.set_weights(interpolate_weights(base_weights, tuned_weights, alpha))
        record(Path("logs/weight_interpolation.jsonl"), f"alpha {alpha:.2f}",
               per_source_val(model, PREPARED, ["fer2013", "real"], 256), alpha=alpha,
               base=str(base_path), finetuned=str(tuned_path))


if __name__ == "__main__":
    main()
