"""Whether the fine-tuned model's class priors should be moved back to FER2013's after the
photos shift them (logit adjustment), judged on each source's validation split.

    nice uv run python bench/prior_correction.py [MODEL]

The training mix holds fewer sad faces than FER2013 alone (the photos are 94 % happy and
neutral). Each validation probability is multiplied by (FER2013 prior / mix prior) ** tau and
the argmax taken again: tau 0 is the model as trained, 1 the full correction. Only validation
splits are read; the table (and logs/prior_correction.jsonl) is the evidence.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PREPARED = Path("data/prepared")
TAUS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5]


def main() -> None:
    from ferpipe.files import load_split
    from ferpipe.modelio import load_keras
    from ferpipe.pipeline.config import load_section
    from ferpipe.pipeline.finetune import mix_sources, split_scores
    from ferpipe.pipeline.models import predict_probs
    from ferpipe.pipeline.params import FinetuneConfig
    from source_rows import record

    path = Path(sys.argv[1] if len(sys.argv) > 1 else "models/trained/finetuned/model.keras")
    cfg = load_section("finetune", FinetuneConfig)
    _, y_mix, classes, _, _ = mix_sources(PREPARED, cfg.mix, cfg.seed)
    y_fer = load_split(PREPARED / "fer2013", "train")[1]
    k = len(classes)
    ratio = (np.bincount(y_fer, minlength=k) / len(y_fer)) / (np.bincount(y_mix, minlength=k) / len(y_mix))
    model = load_keras(path)
    vals = {name: load_split(PREPARED / name, "val") for name in ("fer2013", "real")}
    probs = {name: predict_probs(model, x, 256) for name, (x, _, _) in vals.items()}
    for tau in TAUS:
        scores = {name: split_scores(y, (probs[name] * ratio ** tau).argmax(axis=1), classes)
                  for name, (_, y, _) in vals.items()}
        record(Path("logs/prior_correction.jsonl"), f"tau {tau:.2f}", scores, tau=tau, model=str(path))


if __name__ == "__main__":
    main()
