"""Stage `release`: export the champion as a small, self-contained `.keras` plus a model card."""
from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from ferpipe.files import atomic_path, write_json, write_npz
from ferpipe.pipeline.params import ReleaseConfig  # noqa: F401 (declared TF-free, see ferpipe.pipeline.params)
from ferpipe.modelio import save_model


def export(model_path: Path, out_dir: Path, x_test: np.ndarray, y_test: np.ndarray,
           cfg: ReleaseConfig, tta: str = "none") -> dict:
    """Save the model (with its test-time variant built in) and a few test images with its
    probabilities (a check for users)."""
    from ferpipe.pipeline.models import with_flip_tta

    model = keras.models.load_model(model_path)
    model = with_flip_tta(model) if tta == "flip" else model
    if tuple(model.input_shape[1:]) != x_test.shape[1:] + (1,):
        raise ValueError(f"{model_path}: input shape {model.input_shape} does not take "
                         f"{x_test.shape[1:]} grayscale images")
    release_path = out_dir / "model.keras"
    save_model(model, release_path)
    megabytes = release_path.stat().st_size / 1e6
    if megabytes > cfg.max_megabytes:
        release_path.unlink()
        raise ValueError(f"{model_path}: released file would be {megabytes:.1f} MB, over "
                         f"release.max_megabytes={cfg.max_megabytes}")
    samples = x_test[: cfg.sample_images]
    probs = keras.models.load_model(release_path)(samples[..., None].astype("float32")).numpy()
    write_npz(out_dir / "samples.npz", x=samples, y=y_test[: cfg.sample_images], probs=probs)
    return {"file": str(release_path), "megabytes": round(megabytes, 2), "params": model.count_params()}


def model_card(name: str, classes: list[str], evaluation: dict, exported: dict, data: dict,
               params: dict, commit: str, dirty: bool, latency_ms: float) -> tuple[str, dict]:
    """The card as Markdown and as its JSON twin."""
    card = {
        "model": name, "file": "model.keras", "classes": classes,
        "input": "float32 or uint8 array [batch, 48, 48, 1] of raw grayscale pixels 0..255; "
                 "scaling and any resizing happen inside the model",
        "output": f"float32 [batch, {len(classes)}] class probabilities in the order of 'classes'",
        "selection": f"chosen on validation {evaluation['selection_metric']} among all trained models",
        "validation": evaluation["val"], "test": evaluation["test"],
        "latency_ms_single_image_cpu": latency_ms, "params": exported["params"],
        "megabytes": exported["megabytes"], "data_version": data, "training_params": params,
        "git_commit": commit, "git_dirty": dirty,
        "training_data": "FER2013 training split (Kaggle image version), 4 classes; "
                         "research and education use only, see data/SOURCES",
    }

    def fmt(split: dict) -> str:
        rows = [f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1-score']:.3f} |"
                for c, v in split["per_class"].items()]
        return (f"accuracy {split['accuracy']:.4f}, macro-F1 {split['macro_f1']:.4f}, "
                f"log loss {split['log_loss']:.4f}, ECE {split['ece']:.4f}\n\n"
                "| class | precision | recall | F1 |\n|---|---|---|---|\n" + "\n".join(rows))

    markdown = f"""# Model card: {name}

Facial-emotion classifier for 48x48 grayscale faces, released by the `release` stage.

- **Classes (output order):** {", ".join(classes)}
- **Input:** {card['input']}
- **Output:** {card['output']}
- **Selection:** {card['selection']}; the test split was never used to choose.
- **Size:** {exported['params']:,} parameters, {exported['megabytes']} MB; single-image CPU latency {latency_ms:.2f} ms (measured by the evaluate stage)
- **Data version (DVC md5):** {", ".join(f"`{k}`: `{v}`" for k, v in data.items())}
- **Code:** git commit `{commit}`{" (with uncommitted changes)" if dirty else ""}
- **Training data and terms:** {card['training_data']}

## Validation

{fmt(evaluation['val'])}

## Test

{fmt(evaluation['test'])}

## Use

```python
import keras, numpy as np
model = keras.models.load_model("models/release/model.keras")
probs = model(np.zeros((1, 48, 48, 1), "float32")).numpy()  # raw pixels 0..255
```

## Training params

```json
{json.dumps(params, indent=2)}
```
"""
    return markdown, card


def write_card(out_dir: Path, markdown: str, card: dict) -> None:
    with atomic_path(out_dir / "MODEL_CARD.md") as tmp:
        tmp.write_text(markdown)
    write_json(out_dir / "model_card.json", card)
