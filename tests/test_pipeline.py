"""End to end: `dvc repro` of every stage on the tiny project, then what users rely on."""
import json
import sys

import numpy as np
import pytest
import yaml

from conftest import run

pytestmark = pytest.mark.slow
STAGES = {"prepare", "augment", "train_baselines", "transfer", "tune", "finetune", "finetune_without",
          "evaluate", "release"}
SOURCES = ("expw", "fer2013", "real")


def dvc(project, *args):
    return run([sys.executable, "-m", "dvc", *args], project, env={"MLFLOW_TRACKING_URI": ""})


@pytest.mark.proc
def test_outputs_of_every_stage(tiny_project):
    for source in SOURCES:
        for split in ("train", "val", "test"):
            assert (tiny_project / f"data/prepared/{source}/{split}.npz").exists()
        assert (tiny_project / f"data/prepared/{source}/manifest.csv").exists()
    data = json.loads((tiny_project / "metrics/data.json").read_text())
    for source in SOURCES:
        part = data["sources"][source]
        assert part["kept"] == sum(part["counts"][s]["total"] for s in ("train", "val", "test"))
    # the photos are split by person: nobody is in two splits
    import pandas as pd

    manifest = pd.read_csv(tiny_project / "data/prepared/real/manifest.csv")
    person = manifest.source.str.rsplit("/", n=1).str[-1].str.rsplit("_", n=1).str[0]
    assert (manifest.groupby(person).split.nunique() == 1).all()
    assert (tiny_project / "plots/augment_preview.png").stat().st_size > 1000
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    held_out = params["finetune"]["held_out"]
    assert held_out, "the tiny run keeps a held-out fine-tune, so its stage is exercised"
    models = [*params["baselines"], *params["transfer"], "tuned", "finetuned",
              *(f"finetuned_without_{source}" for source in held_out)]
    for name in models:
        assert (tiny_project / f"models/trained/{name}/model.keras").exists()
        assert json.loads((tiny_project / f"metrics/train/{name}.json").read_text())["epochs_run"] >= 1
    for source in held_out:  # trained on the rest of the mix, scored on the source it never saw
        drawn = json.loads((tiny_project / f"metrics/train/finetuned_without_{source}.json").read_text())["drawn"]
        assert set(drawn) == set(params["finetune"]["mix"]) - {source}
    evaluation = json.loads((tiny_project / "metrics/evaluate.json").read_text())
    assert set(evaluation["unseen"]) >= set(held_out)
    # every model as it is and with each test-time variant (flip averaging)
    assert set(evaluation["models"]) == {f"{m}{v}" for m in models for v in ("", "+flip")}
    assert evaluation["champion"].split("+")[0] == evaluation["champion_model"] in models
    best = max(evaluation["models"].values(), key=lambda m: m["val_macro_f1"])  # mean over sources
    assert evaluation["val"]["macro_f1"] == pytest.approx(best["val_macro_f1"], abs=1e-4)
    assert set(evaluation["sources"]) == set(SOURCES)
    for source in SOURCES:
        assert set(evaluation["sources"][source]) == {"val", "test"}
        for name in models:
            assert (tiny_project / f"plots/confusion/{source}/{name}.csv").exists()
    card = json.loads((tiny_project / "models/release/model_card.json").read_text())
    assert card["model"] == evaluation["champion"] and card["classes"] == params["prepare"]["classes"]


@pytest.mark.proc
def test_mlflow_holds_one_finished_run_per_stage_with_params_and_metrics(tiny_project):
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(f"sqlite:///{tiny_project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["fer-pipeline"])
    assert set(runs["tags.stage"]) == STAGES
    assert set(runs.status) == {"FINISHED"}
    commit = run(["git", "rev-parse", "HEAD"], tiny_project).stdout.strip()
    top = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert set(top["tags.git_commit"]) == {commit}
    assert "untracked" not in set(top["tags.data_version"])
    prepare = top[top["tags.stage"] == "prepare"].iloc[0]
    assert prepare["params.seed"] == "42" and prepare["metrics.fer2013_kept"] > 0 and prepare["metrics.real_kept"] > 0
    baselines = top[top["tags.stage"] == "train_baselines"]
    assert len(baselines) == 2 and baselines["metrics.final_val_accuracy"].notna().all()
    assert baselines["params.model.filters"].notna().all()
    tune = top[top["tags.stage"] == "tune"].iloc[0]
    trials = runs[runs["tags.mlflow.parentRunId"] == tune.run_id]
    assert len(trials) == 2 and trials["metrics.val_accuracy"].notna().all()
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("fer-emotion", "champion")
    assert champion.tags["model_name"] == json.loads(
        (tiny_project / "metrics/evaluate.json").read_text())["champion"]
    served = mlflow.pyfunc.load_model("models:/fer-emotion@champion")
    out = served.predict(pd.DataFrame({"face": [np.zeros((48, 48), int).tolist()] * 2}))
    classes = yaml.safe_load((tiny_project / "params.yaml").read_text())["prepare"]["classes"]
    assert len(out) == 2 and set(out[0]["faces"][0]["probabilities"]) == set(classes)


@pytest.mark.proc
def test_second_repro_does_nothing(tiny_project):
    out = dvc(tiny_project, "repro").stdout
    assert "Running stage" not in out and "up to date" in out


@pytest.mark.proc
def test_released_model_loads_with_plain_keras(tiny_project):
    import keras

    samples = np.load(tiny_project / "models/release/samples.npz")
    model = keras.models.load_model(tiny_project / "models/release/model.keras")
    probs = model(samples["x"][..., None].astype("float32")).numpy()
    np.testing.assert_allclose(probs, samples["probs"], atol=1e-5)


@pytest.mark.proc
def test_evaluate_param_reruns_only_evaluate_and_retraining_does_not_force_it(tiny_project):
    params_path = tiny_project / "params.yaml"
    original = params_path.read_text()
    try:
        params = yaml.safe_load(original)
        params["evaluate"]["ece_bins"] = 10
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
        out = dvc(tiny_project, "repro").stdout
        ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
        assert ran <= {"evaluate", "release"} and "evaluate" in ran
    finally:
        params_path.write_text(original)
        dvc(tiny_project, "repro")
    # Retraining an unchanged model gives the same bytes, so evaluate stays up to date.
    dvc(tiny_project, "repro", "--force", "--single-item", "train_baselines@cnn_a")
    status = dvc(tiny_project, "status").stdout
    assert "evaluate" not in status and "up to date" in status
