"""Stage `release`: export the champion as a small, self-contained `.keras` plus a model card."""
from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from ferpipe.files import atomic_path, write_json, write_npz
from ferpipe.modelio import save_model
from ferpipe.pipeline.config import PipelineError
from ferpipe.pipeline.params import ReleaseConfig


def export(model_path: Path, out_dir: Path, x_test: np.ndarray, y_test: np.ndarray,
           cfg: ReleaseConfig, classes: list[str], parity_faces: np.ndarray, tta: str = "none") -> dict:
    """Save the model (with its test-time variant built in) as .keras and as .onnx, refuse the
    release if the two disagree on `parity_faces` (every test face), and save a few test images
    with their probabilities (a check for users)."""
    from ferpipe.pipeline.models import with_flip_tta
    from ferpipe.pipeline.onnx_export import check_parity, parity, to_onnx

    model = keras.models.load_model(model_path)
    model = with_flip_tta(model) if tta == "flip" else model
    if tuple(model.input_shape[1:]) != x_test.shape[1:] + (1,):
        raise PipelineError(f"{model_path}: input shape {model.input_shape} does not take "
                         f"{x_test.shape[1:]} grayscale images")
    release_path = out_dir / "model.keras"
    save_model(model, release_path)
    megabytes = release_path.stat().st_size / 1e6
    if megabytes > cfg.max_megabytes:
        release_path.unlink()
        raise PipelineError(f"{model_path}: released file would be {megabytes:.1f} MB, over "
                         f"release.max_megabytes={cfg.max_megabytes}")
    onnx_path = to_onnx(model, classes, out_dir / "model.onnx")
    agreement = parity(model, onnx_path, parity_faces)
    try:
        check_parity(agreement, cfg.onnx_max_abs_diff, str(model_path))
    except PipelineError:
        onnx_path.unlink()
        raise
    samples = x_test[: cfg.sample_images]
    probs = keras.models.load_model(release_path)(samples[..., None].astype("float32")).numpy()
    write_npz(out_dir / "samples.npz", x=samples, y=y_test[: cfg.sample_images], probs=probs)
    import cv2

    ok, png = cv2.imencode(".png", samples[0])  # the card's example face
    with atomic_path(out_dir / "sample_face.png") as tmp:
        tmp.write_bytes(png.tobytes())
    return {"file": str(release_path), "megabytes": round(megabytes, 2), "params": model.count_params(),
            "onnx_megabytes": round(onnx_path.stat().st_size / 1e6, 2), **agreement}


def _front_matter(name: str, evaluation: dict) -> str:
    """Hugging Face model-card metadata: licence, library, datasets and a model-index with the
    test results of each source."""
    import yaml

    results = [{"task": {"type": "image-classification", "name": "facial emotion recognition"},
                "dataset": {"type": SOURCE_DATASETS.get(source, source),
                            "name": f"{source} (test split of this project)"},
                "metrics": [{"type": key, "value": round(part["test"][key], 4),
                             "name": f"test {key.replace('_', '-')}"} for key in ("accuracy", "macro_f1")]}
               for source, part in evaluation["sources"].items()]
    meta = {"license": "other", "license_name": "research-and-education-only",
            "license_link": "https://www.kaggle.com/c/challenges-in-representation-learning-facial-"
                            "expression-recognition-challenge/rules",
            "library_name": "keras", "pipeline_tag": "image-classification",
            "tags": ["facial-emotion-recognition", "fer2013", "grayscale", "onnx", "dvc", "mlflow"],
            "datasets": [SOURCE_DATASETS.get(s, s) for s in evaluation["sources"]],
            "metrics": ["accuracy", "f1"], "model-index": [{"name": name, "results": results}]}
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n"


# What each prepared source is, for the card (see data/SOURCES in the shared inputs).
SOURCE_DATASETS = {"fer2013": "fer2013", "real": "lfw-facial-expressions", "expw": "expw"}
SOURCE_NOTES = {"fer2013": "FER2013 training split (48x48 web crops, loosely framed), image-level split",
                "real": "labelled LFW photos (350x350, tightly cropped), split by person",
                "expw": "ExpW everyday web photos (faces cut by the detector), split by source photo"}


def model_card(name: str, classes: list[str], evaluation: dict, exported: dict, data: dict,
               params: dict, commit: str, dirty: bool, latency_ms: float) -> tuple[str, dict]:
    """The card as Markdown (Hugging Face format: YAML front matter) and as its JSON twin."""
    card = {
        "model": name, "file": "model.onnx", "keras_file": "model.keras", "classes": classes,
        "input": "float32 or uint8 array [batch, 48, 48, 1] of raw grayscale pixels 0..255; "
                 "scaling and any resizing happen inside the model",
        "output": f"float32 [batch, {len(classes)}] class probabilities in the order of 'classes'",
        "selection": f"the best mean over sources of {evaluation['selection_metric']} among all "
                     "trained models",
        "sources": evaluation["sources"], "validation": evaluation["val"], "test": evaluation["test"],
        "unseen": evaluation.get("unseen", {}),
        "latency_ms_single_image_cpu": latency_ms, "params": exported["params"],
        "onnx_parity": {k: exported[k] for k in ("onnx_max_abs_diff", "onnx_changed_predictions",
                                                 "onnx_faces")},
        "megabytes": exported["megabytes"], "data_version": data, "training_params": params,
        "git_commit": commit, "git_dirty": dirty,
        "training_data": "; ".join(SOURCE_NOTES.get(s, s) for s in evaluation["sources"])
                         + ". Research and education use only (see data/SOURCES.md)",
    }
    rows = []
    for source, part in evaluation["sources"].items():
        for split in ("val", "test"):
            m = part[split]
            recalls = " / ".join(f"{m['per_class'][c]['recall']:.2f}" for c in classes)
            rows.append(f"| {source} | {split} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {recalls} |")
    markdown = _front_matter(name, evaluation) + f"""
# {name}: facial emotion ({", ".join(classes)})

A Keras CNN that reads one gray face crop and gives the probability of each of {len(classes)}
emotions; with `ferpipe`, it finds the faces in photos and videos first. Released by the
`release` stage of this project's DVC pipeline.

## Results

Chosen on validation only: {card['selection']}. Test was never used to choose.

| source | split | accuracy | macro-F1 | recall {" / ".join(classes)} |
|---|---|---:|---:|---|
{chr(10).join(rows)}

Sources: {card['training_data']}.

## Use

```python
from ferpipe import EmotionRecognizer

faces = EmotionRecognizer().analyze("photo.jpg")    # or bytes, an array, a PIL image
print(faces[0].emotion, faces[0].probabilities)
```

The model file alone (a real test face is in `sample_face.png` beside it), on ONNX Runtime;
`model.keras` is the same model for Keras (largest probability difference on the
{exported['onnx_faces']:,} test faces: {exported['onnx_max_abs_diff']:.1e}, changed predictions:
{exported['onnx_changed_predictions']}):

```python
import cv2, onnxruntime
session = onnxruntime.InferenceSession("model.onnx")
face = cv2.imread("sample_face.png", cv2.IMREAD_GRAYSCALE)     # 48x48 gray, 0..255
probs = session.run(None, {{"faces": face[None, :, :, None].astype("float32")}})[0][0]
```

## Preprocessing contract

- **Gray:** one channel, luminance (OpenCV's BGR->gray weights); colour is not used.
- **Framing:** a square crop of the face: the detector's box (YuNet, made square about its
  centre; Haar's as it is), or the whole centred square of a picture that is already a face.
  Training saw loose FER2013 crops and tight photo crops.
- **Size and range:** resized to 48x48 with area averaging; raw pixels 0..255 as float32 or
  uint8. Scaling happens inside the model.

## Unlike its training data

{unseen_lines(evaluation.get("unseen", {}))}

## Intended use and out of scope

- Intended: research and teaching on facial expression; batch analysis of photos and videos
  where a person's expression is the subject (e.g. labelling a photo collection).
- Out of scope: decisions about people (hiring, policing, health, credit), inferring inner
  feelings from a face, any use where an error harms someone; the 4 labels are posed or
  perceived expressions, not emotions felt.

## Known failure modes

- Neutral faces in photos are often called sad, and closed-mouth smiles neutral or sad: see the
  recall column for `real`; sad has few photo examples (about 18 in each photo split), so its
  photo recall is noisy.
- Faces under 32 px, strongly turned faces and faces the detector misses give no result; a
  near-square picture with no face found is taken as a face (marked `found: whole_image`).
- Trained on FER2013 and LFW photos: skin tones, ages and cultures are unevenly represented.

## Details

- **Size:** {exported['params']:,} parameters, {exported['megabytes']} MB; single-image CPU latency {latency_ms:.2f} ms (evaluate stage)
- **Data version (DVC md5):** {", ".join(f"`{k}`: `{v}`" for k, v in data.items())}
- **Code:** git commit `{commit}`{" (with uncommitted changes)" if dirty else ""}

Training params:

```json
{json.dumps(params, indent=2)}
```
"""
    return markdown, card


def champion_params(name: str, models_dir: Path = Path("models/trained")) -> dict:
    """The params that made the champion, as the typed sections give them: its model entry, or
    the tuned recipe on top of its baseline's; a fine-tune adds its own section to its base's."""
    from ferpipe.pipeline.config import load_entry, load_section, read_params
    from ferpipe.pipeline.params import HELD_OUT_PREFIX, CNNSpec, FinetuneConfig, TrainConfig, TransferSpec

    train = {"train": load_section("train", TrainConfig).model_dump()}
    if name == "finetuned" or name.startswith(HELD_OUT_PREFIX):
        finetune = load_section("finetune", FinetuneConfig)
        if name != "finetuned":
            finetune = finetune.without(name.removeprefix(HELD_OUT_PREFIX))
        return {**champion_params(finetune.base, models_dir), "finetune": finetune.model_dump()}
    named = read_params()  # which section has an entry of this name
    for section, cls in (("baselines", CNNSpec), ("transfer", TransferSpec)):
        if name in (named.get(section) or {}):
            return {section: {name: load_entry(section, name, cls).model_dump()}, **train}
    tuned = models_dir / name / "best_hyperparameters.json"
    recipe = json.loads(tuned.read_text()) if tuned.exists() else {}
    # The searched values apply on top of the baseline's section (architecture, mixup, epochs).
    base = recipe.get("baseline")
    baseline = ({base: load_entry("baselines", base, CNNSpec).model_dump()}
                if base in (named.get("baselines") or {}) else {})
    return {"baselines": baseline, "tune": recipe, **train}


def unseen_lines(unseen: dict) -> str:
    """The card's "unlike its training data" lines: each source scored by the best model that
    never trained on it (metrics/evaluate.json: unseen)."""
    if not unseen:
        return "Every source was in the training data of every model; no unseen score."
    return "\n".join(f"- {source} ({SOURCE_NOTES.get(source, source)}): {part['model']}, not trained "
                     f"on it, scores test accuracy {part['test_accuracy']:.3f}, macro-F1 "
                     f"{part['test_macro_f1']:.3f}: how the model holds up on pictures of a kind it "
                     "has not seen." for source, part in unseen.items())


def write_card(out_dir: Path, markdown: str, card: dict) -> None:
    with atomic_path(out_dir / "MODEL_CARD.md") as tmp:
        tmp.write_text(markdown)
    write_json(out_dir / "model_card.json", card)
