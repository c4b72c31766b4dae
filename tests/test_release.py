"""The committed release: plain Keras loads it, with no project code, MLflow DB or DVC cache."""
import json
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

RELEASE = ROOT / "models" / "release"

CHECK = """
import json, sys
import keras, numpy as np
model = keras.models.load_model("model.keras")
samples = np.load("samples.npz")
assert samples["x"].dtype == np.uint8 and samples["x"].shape[1:] == (48, 48)
probs = model(samples["x"][..., None]).numpy()  # raw uint8 pixels, no preprocessing
np.testing.assert_allclose(probs, samples["probs"], atol=1e-5)
assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
card = json.load(open("model_card.json"))
assert probs.shape[1] == len(card["classes"])
print((probs.argmax(axis=1) == samples["y"]).mean())
"""


def test_release_is_small_and_documented():
    card = json.loads((RELEASE / "model_card.json").read_text())
    assert (RELEASE / "model.keras").stat().st_size <= 10 * 1024 * 1024
    assert card["classes"] == ["happy", "neutral", "sad", "surprise"]
    for key in ("validation", "test", "data_version", "training_params", "git_commit"):
        assert card[key], key
    text = (RELEASE / "MODEL_CARD.md").read_text()
    import yaml

    meta = yaml.safe_load(text.split("---", 2)[1])  # Hugging Face model-card metadata
    assert meta["library_name"] == "keras" and meta["license"] and meta["datasets"]
    results = meta["model-index"][0]["results"]
    assert {r["dataset"]["name"].split()[0] for r in results} == set(card["sources"])
    for heading in ("## Results", "## Preprocessing contract", "## Intended use and out of scope",
                    "## Known failure modes"):
        assert heading in text, heading


@pytest.mark.proc
def test_the_cards_example_runs_on_its_real_sample_face(tmp_path):
    text = (RELEASE / "MODEL_CARD.md").read_text()
    example = [block.split("```", 1)[0] for block in text.split("```python")[1:]][1]
    assert "sample_face.png" in example and "zeros" not in example
    for name in ("model.onnx", "model.keras", "sample_face.png"):
        shutil.copy(RELEASE / name, tmp_path / name)
    proc = subprocess.run([sys.executable, "-c", example + "\nprint(int(probs.argmax()))"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import numpy as np

    samples = np.load(RELEASE / "samples.npz")
    assert int(proc.stdout.split()[-1]) == int(samples["probs"][0].argmax())  # the same face


@pytest.mark.proc
def test_release_predicts_with_plain_keras_in_a_bare_folder(tmp_path):
    for name in ("model.keras", "samples.npz", "model_card.json"):
        shutil.copy(RELEASE / name, tmp_path / name)
    proc = subprocess.run([sys.executable, "-I", "-c", CHECK], cwd=tmp_path, capture_output=True,
                          text=True, env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.strip().splitlines()[-1]) >= 0.5  # 8 test faces; chance is 0.25
