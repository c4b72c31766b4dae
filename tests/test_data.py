"""Data checks of the prepare and augment stages, on archives built inside each test."""
import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ferpipe.files import load_split
from ferpipe.pipeline.augment import AugmentConfig, augment, augment_split
from ferpipe.pipeline.data import PrepareConfig, prepare
from ferpipe.pipeline.tiny import make_archive, synthetic_image

CLASSES = ["happy", "neutral", "sad", "surprise"]


def jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")  # lossless, so pixel hashes are exact
    return buf.getvalue()


def add(archive: Path, entries: dict[str, bytes]) -> None:
    with zipfile.ZipFile(archive, "a") as zf:
        for name, payload in entries.items():
            zf.writestr(name, payload)


def run_prepare(tmp_path: Path, source: Path, **overrides) -> dict:
    cfg = PrepareConfig(source=str(source), classes=CLASSES, **overrides)
    return prepare(cfg, tmp_path / "prepared", tmp_path / "data.json")


@pytest.mark.parametrize("layout", ["fer", "study"])
def test_both_layouts_give_three_stratified_splits(tmp_path, layout):
    source = make_archive(tmp_path / "in.zip", CLASSES, per_class=30, layout=layout)
    report = run_prepare(tmp_path, source)
    for split in ("train", "val", "test"):
        x, y, classes = load_split(tmp_path / "prepared", split)
        assert x.dtype == np.uint8 and x.shape[1:] == (48, 48)
        assert classes == CLASSES and set(y) == {0, 1, 2, 3}
        assert report["counts"][split]["total"] == len(x)
    assert report["input_files_by_class"]["angry"] > 0  # other classes are read, then left out
    manifest = pd.read_csv(tmp_path / "prepared" / "manifest.csv")
    assert set(manifest.columns) == {"source", "label", "split", "pixel_hash"}
    assert set(manifest.label) == set(CLASSES)


def test_folder_input_and_resizing_color_images(tmp_path):
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        folder = tmp_path / "faces" / "train" / cls
        folder.mkdir(parents=True)
        for i in range(12):
            rgb = np.stack([synthetic_image(CLASSES.index(cls), rng, side=96)] * 3, axis=-1)
            Image.fromarray(rgb).save(folder / f"{i}.png")
    run_prepare(tmp_path, tmp_path / "faces", val_fraction=0.2, test_fraction=0.2)
    x, _, _ = load_split(tmp_path / "prepared", "train")
    assert x.shape[1:] == (48, 48)


def test_splits_are_seeded(tmp_path):
    source = make_archive(tmp_path / "in.zip", CLASSES, per_class=30)
    run_prepare(tmp_path / "a", source, seed=1)
    run_prepare(tmp_path / "b", source, seed=1)
    run_prepare(tmp_path / "c", source, seed=2)
    read = lambda d: pd.read_csv(d / "prepared" / "manifest.csv")  # noqa: E731
    assert read(tmp_path / "a").equals(read(tmp_path / "b"))
    assert not read(tmp_path / "a").equals(read(tmp_path / "c"))


def test_corrupt_file_is_named_or_counted_when_skipping(tmp_path):
    source = make_archive(tmp_path / "in.zip", CLASSES, per_class=20)
    add(source, {"tiny/train/sad/broken.jpg": b"not an image"})
    with pytest.raises(ValueError, match="broken.jpg"):
        run_prepare(tmp_path, source)
    report = run_prepare(tmp_path, source, skip_corrupt=True)
    assert report["dropped"]["undecodable"] == 1


def test_duplicates_never_straddle_splits_and_conflicts_are_dropped(tmp_path):
    source = make_archive(tmp_path / "in.zip", CLASSES, per_class=20, layout="study")
    rng = np.random.default_rng(5)
    shared, conflicted = synthetic_image(0, rng), synthetic_image(1, rng)
    add(source, {"tiny/train/happy/dup_a.png": jpeg(shared), "tiny/test/happy/dup_b.png": jpeg(shared),
                 "tiny/validation/happy/dup_c.png": jpeg(shared),
                 "tiny/train/neutral/conf_a.png": jpeg(conflicted),
                 "tiny/train/sad/conf_b.png": jpeg(conflicted)})
    report = run_prepare(tmp_path, source)
    manifest = pd.read_csv(tmp_path / "prepared" / "manifest.csv")
    assert manifest.groupby("pixel_hash").split.nunique().max() == 1
    assert not manifest.source.str.contains("conf_").any()
    assert manifest.source.str.contains("dup_").sum() == 1
    assert report["conflicting_label_groups"] == 1
    assert report["dropped"]["conflicting_label_duplicates"] == 2
    assert report["dropped"]["duplicate_copies"] == 2


def test_near_blank_images_are_dropped(tmp_path):
    source = make_archive(tmp_path / "in.zip", CLASSES, per_class=20)
    add(source, {"tiny/train/happy/blank.png": jpeg(np.full((48, 48), 128, np.uint8))})
    report = run_prepare(tmp_path, source)
    assert report["dropped"]["near_blank"] == 1


@pytest.mark.parametrize("entry", ["../evil/train/happy/x.jpg", "/abs/train/happy/x.jpg"])
def test_zip_slip_entries_are_refused(tmp_path, entry):
    source = make_archive(tmp_path / "in.zip", CLASSES, per_class=10)
    add(source, {entry: b"x"})
    with pytest.raises(ValueError, match="escapes the target folder"):
        run_prepare(tmp_path, source)


def test_missing_class_is_an_error_naming_it(tmp_path):
    source = make_archive(tmp_path / "in.zip", ["happy", "neutral", "sad"], per_class=10)
    with pytest.raises(ValueError, match="surprise"):
        run_prepare(tmp_path, source)


def test_augment_is_deterministic_and_keeps_originals(tmp_path):
    source = make_archive(tmp_path / "in.zip", CLASSES, per_class=20)
    run_prepare(tmp_path, source)
    cfg = AugmentConfig(copies=2, preview_images=2)
    for out in ("a", "b"):
        augment(cfg, tmp_path / "prepared", tmp_path / out, tmp_path / out / "preview.png")
    assert (tmp_path / "a/train.npz").read_bytes() == (tmp_path / "b/train.npz").read_bytes()
    assert (tmp_path / "a/preview.png").read_bytes() == (tmp_path / "b/preview.png").read_bytes()
    x, y, _ = load_split(tmp_path / "prepared", "train")
    x_aug, y_aug, _ = load_split(tmp_path / "a", "train")
    assert len(x_aug) == 3 * len(x) and np.array_equal(x_aug[: len(x)], x)
    assert np.array_equal(y_aug, np.concatenate([y] * 3))


def test_augment_flips_some_images_not_all():
    rng = np.random.default_rng(0)
    x = np.stack([synthetic_image(2, rng) for _ in range(200)])
    cfg = AugmentConfig(copies=1, brightness=0.0, shear=0.0, rotation_deg=0.0, zoom=0.0, shift=0.0)
    out, _ = augment_split(x, np.zeros(200, np.int64), cfg)
    flipped = np.array([np.array_equal(a, b[:, ::-1]) for a, b in zip(out[200:], x)])
    assert 0.3 < flipped.mean() < 0.7
