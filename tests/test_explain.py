"""Grad-CAM: maps for hand-built and transfer models, the pipeline's grid, `ferpipe explain`."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "models/release"


@pytest.fixture(scope="module")
def release():
    """(model, classes, sample faces, their labels) of the committed release."""
    import keras

    samples = np.load(RELEASE / "samples.npz")
    classes = json.loads((RELEASE / "model_card.json").read_text())["classes"]
    return keras.models.load_model(RELEASE / "model.keras"), classes, samples["x"], samples["y"]


def test_gradcam_maps_are_0_to_1_face_sized_and_not_flat(release):
    from ferpipe.explain import gradcam

    model, classes, x, _ = release
    maps = gradcam(model, x[:4])
    assert maps.shape == (4, 48, 48) and maps.dtype == np.float32
    assert maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    assert (maps.std(axis=(1, 2)) > 0.05).all()  # a map that points somewhere, not a flat field
    # Asking about another class explains another decision: the maps differ.
    predicted = model(x[:1, ..., None].astype("float32")).numpy().argmax()
    other = gradcam(model, x[:1], class_index=(predicted + 1) % len(classes))
    assert not np.allclose(other, maps[:1], atol=0.05)


def test_gradcam_reaches_into_a_backbone_and_a_tta_wrapper_and_refuses_a_model_without_conv(release):
    import keras

    from ferpipe.explain import gradcam
    from ferpipe.pipeline.models import TransferSpec, build_transfer, with_flip_tta

    base, _, x, _ = release
    wrapped = gradcam(with_flip_tta(base), x[:2], class_index=[0, 1])  # the champion may be wrapped
    np.testing.assert_allclose(wrapped, gradcam(base, x[:2], class_index=[0, 1]), atol=1e-5)

    model, _ = build_transfer(TransferSpec(backbone="mobilenet_v2", weights="none", alpha=0.35,
                                           input_px=96), 4)
    maps = gradcam(model, np.random.default_rng(0).integers(0, 256, (2, 48, 48), dtype=np.uint8))
    assert maps.shape == (2, 48, 48) and 0 <= maps.min() and maps.max() <= 1

    inputs = keras.Input((48, 48, 1))
    dense = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match="no convolutional layer"):
        gradcam(dense, np.zeros((1, 48, 48), np.uint8))


def test_grid_png_is_written_atomically(release, tmp_path):
    from ferpipe.pipeline.reports import gradcam_grid

    model, classes, x, y = release
    path = gradcam_grid(model, x, y, classes, tmp_path / "plots/gradcam.png", per_class=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["gradcam.png"]  # no temp file left
    with pytest.raises(ValueError, match="no faces"):
        gradcam_grid(model, x[:0], y[:0], classes, tmp_path / "empty.png")


def explain(*argv: str) -> int:
    from ferpipe.cli.explain import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["explain", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def face_png(tmp_path_factory) -> Path:
    import cv2

    path = tmp_path_factory.mktemp("faces") / "face.png"
    cv2.imwrite(str(path), cv2.resize(np.load(RELEASE / "samples.npz")["x"][0], (96, 96)))
    return path


def test_explain_command_writes_an_overlay_per_face_and_names_bad_files(face_png, tmp_path, capsys):
    from PIL import Image
    from skimage import data

    out = tmp_path / "out"
    missing, text = tmp_path / "missing.png", tmp_path / "notes.png"
    text.write_text("not an image")
    assert explain(str(face_png), str(missing), str(text), "--no-detect", "--out", str(out),
                   "--model", str(RELEASE / "model.keras")) == 1
    captured = capsys.readouterr()
    (overlay,) = out.iterdir()
    assert overlay.name.startswith("face_face0_") and overlay.read_bytes()[:4] == b"\x89PNG"
    assert f"{missing}: no such file" in captured.err
    assert f"{text}: not an image (JPEG, PNG, BMP, GIF, TIFF or WebP)" in captured.err

    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.jpg")
    Image.fromarray(data.coffee()).save(tmp_path / "coffee.jpg")
    assert explain(str(tmp_path / "astronaut.jpg"), str(tmp_path / "coffee.jpg"), "--out", str(out),
                   "--model", str(RELEASE / "model.keras")) == 0
    assert any(p.name.startswith("astronaut_face0_") for p in out.iterdir())
    assert "coffee.jpg: no face found" in capsys.readouterr().out


@pytest.mark.proc
@pytest.mark.slow
def test_ferpipe_explain_console_command(face_png, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ferpipe", "explain", str(face_png), "--no-detect",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(tmp_path.glob("face_face0_*.png"))) == 1
