"""Levers that change how a trained model decides, not the model: measured on validation.

    nice -n 19 uv run python bench/decision_levers.py [--model models/trained/vgg_bn/model.keras]

1. Crop averaging at test time (the published ten-crop): the mean over the face shifted by
   d px to its four corners (or four sides) and the centre, 5 views, and with their mirrors,
   10 views. Shifts repeat edge pixels, as the trainer's `random_shift` does.
2. A per-class bias on the log-probabilities, fitted on validation to maximise accuracy or
   macro-F1 (the sad/neutral trade-off). Fitted and scored on the same faces it always wins,
   so it is judged by cross-fitting: fitted on one half of validation, scored on the other,
   5 random halvings x 2 folds.

A lever is worth building into the release only if its validation gain clearly exceeds the
noise of 1,934 faces (about +-0.9 points). Test figures are printed for the record, never
used to choose.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score, recall_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from ferpipe.files import load_split

SAD = 2  # index of "sad" in the default class list, for the recall column


def shifted(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Images moved by (dy, dx) px; the edge rows and columns repeat into the gap."""
    rows = np.clip(np.arange(x.shape[1]) - dy, 0, x.shape[1] - 1)
    cols = np.clip(np.arange(x.shape[2]) - dx, 0, x.shape[2] - 1)
    return x[:, rows][:, :, cols]


def scores(probs: np.ndarray, y: np.ndarray, bias: np.ndarray | None = None) -> tuple[float, float, float]:
    """(accuracy, macro-F1, sad recall) of argmax(log p + bias)."""
    probs = probs / probs.sum(axis=1, keepdims=True)  # sums over views become means
    pred = (np.log(np.clip(probs, 1e-12, 1)) + (0 if bias is None else bias)).argmax(1)
    return ((pred == y).mean(), f1_score(y, pred, average="macro"),
            recall_score(y, pred, average=None, zero_division=0)[SAD])


def fit_bias(probs: np.ndarray, y: np.ndarray, which: int, step: float = 0.1,
             reach: float = 0.6) -> np.ndarray:
    """Grid search of the other classes' offsets against class 0 (the first is fixed at 0)."""
    grid = np.arange(-reach, reach + step / 2, step)
    best, best_bias = -np.inf, np.zeros(probs.shape[1])
    for offsets in itertools.product(grid, repeat=probs.shape[1] - 1):
        bias = np.array([0.0, *offsets])
        value = scores(probs, y, bias)[which] - 1e-4 * np.abs(bias).sum()  # ties: smallest bias
        if value > best:
            best, best_bias = value, bias
    return best_bias


def cross_fitted_gain(probs: np.ndarray, y: np.ndarray, which: int, repeats: int = 5) -> list[float]:
    rng, gains = np.random.default_rng(0), []
    for _ in range(repeats):
        order = rng.permutation(len(y))
        halves = order[:len(y) // 2], order[len(y) // 2:]
        for fit_on, score_on in (halves, halves[::-1]):
            bias = fit_bias(probs[fit_on], y[fit_on], which)
            gains.append(scores(probs[score_on], y[score_on], bias)[which]
                         - scores(probs[score_on], y[score_on])[which])
    return gains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/trained/vgg_bn/model.keras")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--shifts", type=int, nargs="+", default=[2, 3, 4])
    args = parser.parse_args()
    import keras

    from ferpipe.pipeline.models import predict_probs

    model = keras.models.load_model(args.model)
    data = {split: load_split(args.prepared, split)[:2] for split in ("val", "test")}
    probs = {}
    for split, (x, y) in data.items():
        # Sums over views: `scores` normalises them to means.
        def views(offsets, x=x):
            return sum(predict_probs(model, shifted(x, dy, dx), 256) for dy, dx in offsets)

        def mirrored(offsets, x=x):
            return sum(predict_probs(model, shifted(x, dy, dx)[:, :, ::-1], 256) for dy, dx in offsets)

        probs[split] = plain = views([(0, 0)])
        print(f"{split}: none {scores(plain, y)[0]:.4f}  flip "
              f"{scores(plain + mirrored([(0, 0)]), y)[0]:.4f}")
        for d in args.shifts:
            for name, offsets in (("corners", [(0, 0), (-d, -d), (-d, d), (d, -d), (d, d)]),
                                  ("sides", [(0, 0), (0, d), (0, -d), (d, 0), (-d, 0)])):
                five = views(offsets)
                print(f"{split}: {d} px {name:7s} 5 views {scores(five, y)[0]:.4f}  "
                      f"10 views {scores(five + mirrored(offsets), y)[0]:.4f}")

    (_, y_val), (_, y_test) = data["val"], data["test"]
    print("\nbias on log-probabilities    val acc / macro-F1 / sad recall   test (record only)")
    print(f"none                         {np.round(scores(probs['val'], y_val), 4)}  "
          f"{np.round(scores(probs['test'], y_test), 4)}")
    for which, name in ((0, "accuracy"), (1, "macro-F1")):
        bias = fit_bias(probs["val"], y_val, which)
        gains = cross_fitted_gain(probs["val"], y_val, which)
        print(f"fitted for {name:9s} {bias.round(2)}  {np.round(scores(probs['val'], y_val, bias), 4)}  "
              f"{np.round(scores(probs['test'], y_test, bias), 4)}")
        print(f"  cross-fitted {name} gain on held-out halves: {np.mean(gains):+.4f} "
              f"(sd {np.std(gains):.4f}, {len(gains)} folds)")


if __name__ == "__main__":
    main()
