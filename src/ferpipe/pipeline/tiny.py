"""A tiny, learnable stand-in dataset and configuration: the whole pipeline in minutes.

`python -m ferpipe.pipeline.tiny DEST [--source REPO]` copies the project (the current folder, else
the checkout this package is installed from) to DEST with tiny params and a synthetic
archive, so `cd DEST && dvc repro` smoke-tests every stage. Tests use it too.
"""
from __future__ import annotations

import argparse
import copy
import io
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from ferpipe.pipeline.config import read_params

TINY_ARCHIVE = "data/raw/tiny.zip"
TINY_PHOTOS = "data/raw/tiny_real.zip"  # a second source, named by person as the real photos are
TINY_EVERYDAY = "data/raw/tiny_expw.zip"  # a third, framed by the detector as expw is
# Overrides merged into params.yaml; model sections (and sources, mixes) are replaced whole.
TINY_PARAMS = {
    "prepare": {"sources": {
        "fer2013": {"source": TINY_ARCHIVE, "val_fraction": 0.2, "test_fraction": 0.2},
        "expw": {"source": TINY_EVERYDAY, "val_fraction": 0.25, "test_fraction": 0.25,
                 "group_pattern": r"(.+)_\d+", "framing": "detect"},
        "real": {"source": TINY_PHOTOS, "val_fraction": 0.25, "test_fraction": 0.25,
                 "group_pattern": "(.+)_\\d+"}}},
    "finetune": {"epochs": 1, "mix": {"fer2013": {"per_class_cap": 0, "repeat": 1},
                                      "real": {"per_class_cap": 12, "repeat": 2},
                                      "expw": {"per_class_cap": 0, "repeat": 1}},
                 "held_out": ["expw"]},
    "augment": {"copies": 1, "preview_images": 2},
    "train": {"batch_size": 16, "early_stopping_patience": 2},
    "baselines": {"cnn_a": {"filters": [8, 16], "dense_units": [16], "epochs": 3},
                  "cnn_b": {"filters": [8, 16], "batch_norm": True, "head": "gap",
                            "dense_units": [16], "epochs": 3}},
    "transfer": {"mobilenet_v2_035": {
        "backbone": "mobilenet_v2", "alpha": 0.35, "input_px": 32, "dense_units": 16,
        "weights": "data/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
        "head_epochs": 1, "finetune_epochs": 1, "finetune_layers": 10}},
    "tune": {"baseline": "cnn_a", "algorithm": "random", "max_trials": 2, "max_epochs": 1,
             "search_train_images": 200,
             "space": {"learning_rate": [0.003], "dropout": [0.2], "random_shift": [0.1],
                       "optimizer": ["adam"]}},
}
REPLACED_WHOLE = {"baselines", "transfer", "sources", "mix"}
COPIED = ["dvc.yaml", "params.yaml", "stages", "src", ".dvc/config", ".dvcignore", "data/weights",
          "MLproject", "pyproject.toml"]


def synthetic_image(label: int, rng: np.random.Generator, side: int = 48) -> np.ndarray:
    """Noise plus a bar whose orientation is the class: easy to learn, not trivial."""
    image = rng.normal(110, 25, (side, side))
    centre = side // 2 + rng.integers(-6, 7)
    width = rng.integers(3, 7)
    bar = np.zeros((side, side), dtype=bool)
    idx = np.arange(side)
    if label % 4 == 0:
        bar[centre - width // 2:centre + width // 2 + 1, :] = True
    elif label % 4 == 1:
        bar[:, centre - width // 2:centre + width // 2 + 1] = True
    else:
        diagonal = idx[:, None] - idx[None, :] if label % 4 == 2 else idx[:, None] + idx[None, :] - side
        bar = np.abs(diagonal - (centre - side // 2)) <= width
    image[bar] += 90
    return np.clip(image, 0, 255).astype(np.uint8)


def make_archive(path: Path | str, classes: list[str], per_class: int = 40, seed: int = 0,
                 layout: str = "fer", extra_classes: tuple[str, ...] = ("angry",)) -> Path:
    """A zip in the FER2013 layout (train/ only), the study's (train/validation/test), or the
    real photos' ("people": <class>/<Person>_<NNNN>.jpg, 96 px, a few photos a person)."""
    rng = np.random.default_rng(seed)
    splits = {"fer": [("train", 1.0)], "study": [("train", 0.6), ("validation", 0.2), ("test", 0.2)],
              "people": [("", 1.0)]}[layout]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for label, name in enumerate([*classes, *extra_classes]):
            for split, share in splits:
                for i in range(max(2, int(per_class * share))):
                    buf = io.BytesIO()
                    side = 96 if layout == "people" else 48
                    Image.fromarray(synthetic_image(label, rng, side)).save(buf, format="JPEG", quality=95)
                    entry = (f"tiny_real/{name}/Person_{name}_{i // 3:02d}_{i % 3 + 1:04d}.jpg"
                             if layout == "people" else f"tiny/{split}/{name}/{split}_{i:04d}.jpg")
                    archive.writestr(entry, buf.getvalue())
    return path


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in REPLACED_WHOLE:
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


PROJECT_MARKERS = ("dvc.yaml", "params.yaml", "stages")


def find_source(source: Path | str | None = None) -> Path:
    """The project to copy: `source`; by default the current folder, else this package's checkout."""
    candidates = [Path(source)] if source is not None else [Path.cwd(), Path(__file__).resolve().parents[2]]
    for path in candidates:
        if all((path / marker).exists() for marker in PROJECT_MARKERS):
            return path.resolve()
    raise ValueError(f"{candidates[0].resolve()}: not a ferpipe project (needs dvc.yaml, params.yaml "
                     "and stages/): run this in the repo root, or pass --source REPO")


def make_project(dest: Path | str, source: Path | str | None = None, per_class: int = 40) -> Path:
    """Copy the project to `dest` as a fresh git + DVC repo with tiny params and data.

    Everything is checked before `dest` is made, and a failure removes what was written."""
    source, dest = find_source(source), Path(dest).resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"{dest}: already exists and is not an empty folder; remove it or choose another DEST")
    params = read_params(source / "params.yaml")
    existed = dest.exists()
    try:
        _write_project(dest, source, params, per_class)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        if existed:
            dest.mkdir()
        raise
    return dest


def _write_project(dest: Path, source: Path, params: dict, per_class: int) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for rel in COPIED:
        src = source / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / "params.yaml").write_text(yaml.safe_dump(merge(params, TINY_PARAMS), sort_keys=False))
    make_archive(dest / TINY_ARCHIVE, params["prepare"]["classes"], per_class=per_class)
    make_archive(dest / TINY_PHOTOS, params["prepare"]["classes"], per_class=per_class, seed=1,
                 layout="people")
    make_archive(dest / TINY_EVERYDAY, params["prepare"]["classes"], per_class=per_class, seed=2,
                 layout="people")
    (dest / ".gitignore").write_text("mlflow.db\nmlruns/\n/models/\n/tuning/\n/data/raw/tiny*.zip\n")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=tiny", "-c", "user.email=tiny@localhost",
                 "commit", "-qm", "tiny project"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True, text=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ferpipe.pipeline.tiny",
                                     description="Copy the project with tiny params and data to DEST.")
    parser.add_argument("dest", metavar="DEST", help="a new (or empty) folder")
    parser.add_argument("--source", metavar="REPO", help="the project to copy (default: the current "
                        "folder, else the checkout this package is installed from)")
    args = parser.parse_args(argv)
    try:
        dest = make_project(args.dest, args.source)
    except (ValueError, OSError, subprocess.CalledProcessError) as err:
        detail = f": {err.stderr.strip()}" if getattr(err, "stderr", None) else ""
        sys.exit(f"error: {err}{detail}")
    print(f"tiny project ready: cd {dest} && dvc repro")


if __name__ == "__main__":
    main()
