"""Can a short tuner trial rank recipes? Short-trial scores against full-run scores, from MLflow.

Every tune trial (a child run of a `tune` run) is matched to the full runs of the same recipe:
the baseline's own `train_baselines` runs and `tune` runs that retrained a winner, with the
same data version and epoch budget. Prints one row per recipe and the rank correlation between
short-trial and full-run validation accuracy over the recipes that have both.

    python bench/tuner_rank.py [--tracking-uri sqlite:///mlflow.db] [--experiment fer-pipeline]

Reads only; nothing is trained. A recipe needs a full run to count, and a full vgg_bn run costs
about 90 min here, which is why few recipes have one.
"""
from __future__ import annotations

import argparse
from collections import defaultdict

from mlflow.tracking import MlflowClient
from scipy.stats import kendalltau, spearmanr

RECIPE = ("dropout", "random_shift", "learning_rate", "optimizer", "mixup_alpha")


def number(text: str | None, default: float = 0.0) -> float | str:
    try:
        return float(text) if text is not None else default
    except ValueError:
        return text


def short_score(client: MlflowClient, run) -> float | None:
    """The trial's score as the oracle saw it (the kept epoch's), not its last epoch's."""
    if "trial_val_accuracy" in run.data.metrics:
        return run.data.metrics["trial_val_accuracy"]
    # Older trials logged the score under val_accuracy at step 0, after the per-epoch values.
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    return max(history, key=lambda m: m.timestamp).value if history else None


def trial_key(trial, parent) -> tuple:
    p, q = trial.data.params, parent.data.params
    mixup = q.get("baseline.mixup_alpha", q.get("train.mixup_alpha"))
    recipe = (*(number(p[k]) for k in RECIPE[:4]), number(mixup))
    return recipe, parent.data.tags.get("data_version"), int(q["baseline.epochs"])


def full_key(run) -> tuple:
    p = run.data.params
    mixup = p.get("model.mixup_alpha", p.get("train.mixup_alpha"))
    recipe = (number(p["model.dense_dropout"]), number(p["model.random_shift"]),
              number(p["model.learning_rate"]), p["train.optimizer"], number(mixup))
    return recipe, run.data.tags.get("data_version"), int(p["model.epochs"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="fer-pipeline")
    parser.add_argument("--baseline", default="vgg_bn", help="the tuned family's baseline model")
    args = parser.parse_args()
    client = MlflowClient(args.tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"error: no MLflow experiment '{args.experiment}' at {args.tracking_uri}")
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    by_id = {r.info.run_id: r for r in runs}
    trials = {(r.data.tags.get("mlflow.parentRunId"), r.data.tags.get("trial_id")): r for r in runs}

    short, full = defaultdict(set), defaultdict(list)
    for run in runs:
        parent = by_id.get(run.data.tags.get("mlflow.parentRunId", ""))
        tags = run.data.tags
        if parent is not None and parent.data.tags.get("stage") == "tune":
            score = short_score(client, run)
            if score is not None and run.info.status == "FINISHED":
                short[trial_key(run, parent)].add(round(score, 4))
        elif run.info.status != "FINISHED" or "final_val_accuracy" not in run.data.metrics:
            continue
        elif tags.get("stage") == "train_baselines" and tags.get("model_name") == args.baseline:
            full[full_key(run)].append((run.data.metrics["final_val_accuracy"], tags.get("git_commit", "")[:7]))
        elif tags.get("stage") == "tune" and "best_trial_id" in tags:  # a retrained winner
            winner = trials.get((run.info.run_id, tags["best_trial_id"]))
            if winner:
                full[trial_key(winner, run)].append(
                    (run.data.metrics["final_val_accuracy"], tags.get("git_commit", "")[:7]))

    print(f"{'dropout, shift, lr, optimizer, mixup':<40} {'epochs':>6} {'short':>7} {'full':>7}  commits")
    pairs = []
    for key in sorted(short, key=lambda k: -max(short[k])):
        recipe, _, epochs = key
        scores = sorted(short[key])
        fulls = full.get(key, [])
        mean_full = sum(v for v, _ in fulls) / len(fulls) if fulls else None
        print(f"{str(recipe):<40} {epochs:>6} {'/'.join(f'{s:.4f}' for s in scores):>7} "
              f"{f'{mean_full:.4f}' if fulls else '-':>7}  {' '.join(c for _, c in fulls)}")
        if fulls:
            pairs.append((sum(scores) / len(scores), mean_full))
    if len(pairs) < 3:
        print(f"\n{len(pairs)} recipes have both a short trial and a full run: too few to rank")
        return
    xs, ys = zip(*pairs)
    print(f"\n{len(pairs)} recipes with both: Spearman rho {spearmanr(xs, ys)[0]:+.2f}, "
          f"Kendall tau {kendalltau(xs, ys)[0]:+.2f} (with 3 recipes, rho = 1 happens by chance 1 time in 6)")


if __name__ == "__main__":
    main()
