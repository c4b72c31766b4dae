"""Whether averaging the base model's and the fine-tuned model's probabilities holds both
sources better than either model, judged on each source's validation split.

    nice uv run python bench/output_ensemble.py [BASE] [FINETUNED]

w is the fine-tuned model's share of the averaged probabilities: 0 is the base model, 1 the
fine-tuned one. Unlike weight interpolation (bench/weight_interpolation.py) both networks run,
so a prediction costs twice. Only validation splits are read; the table (and
logs/output_ensemble.jsonl) is the evidence.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PREPARED = Path("data/prepared")
SHARES = [0.0, 0.25, 0.4, 0.5, 0.6, 0.75, 1.0]
SOURCES = ["fer2013", "real"]


def main() -> None:
    from ferpipe.files import load_split
    from ferpipe.modelio import load_keras
    from ferpipe.pipeline.finetune import split_scores
    from ferpipe.pipeline.models import predict_probs
    from source_rows import record

    base_path = Path(sys.argv[1] if len(sys.argv) > 1 else "models/trained/tuned/model.keras")
    tuned_path = Path(sys.argv[2] if len(sys.argv) > 2 else "models/trained/finetuned/model.keras")
    base, tuned = load_keras(base_path), load_keras(tuned_path)
    splits = {name: load_split(PREPARED / name, "val") for name in SOURCES}
    probs = {name: (predict_probs(base, x, 256), predict_probs(tuned, x, 256))
             for name, (x, _, _) in splits.items()}
    for w in SHARES:
        scores = {name: split_scores(y, ((1 - w) * probs[name][0] + w * probs[name][1]).argmax(axis=1),
                                     classes)
                  for name, (_, y, classes) in splits.items()}
        record(Path("logs/output_ensemble.jsonl"), f"w {w:.2f}", scores, share=w,
               base=str(base_path), finetuned=str(tuned_path))


if __name__ == "__main__":
    main()
