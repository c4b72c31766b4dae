"""Archive and image faults of `prepare`: limits, damaged entries, layouts, splits, decoding.

Each builds a tiny archive in tmp_path; "big" inputs are limits set low, not big files."""
import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import ferpipe.pipeline.data as data
from ferpipe.files import load_split
from ferpipe.pipeline.data import PrepareConfig, content_hash, decode, iter_images, prepare
from ferpipe.pipeline.tiny import make_archive, synthetic_image

CLASSES = ["happy", "neutral", "sad", "surprise"]


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with no pixel data: 57 bytes."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def add(archive: Path, entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> None:
    with zipfile.ZipFile(archive, "a", compression=method) as zf:
        for name, payload in entries.items():
            zf.writestr(name, payload)


def write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in entries.items():
            zf.writestr(name, payload)
    return path


def faces(per_class: int, prefix: str, classes=CLASSES, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {f"{prefix}{cls}/{i:03d}.png": png(synthetic_image(label, rng))
            for label, cls in enumerate(classes) for i in range(per_class)}


def run_prepare(tmp_path: Path, source: Path, **overrides) -> dict:
    cfg = PrepareConfig(source=str(source), classes=CLASSES, **overrides)
    return prepare(cfg, tmp_path / "prepared", tmp_path / "data.json")


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert len(message.splitlines()) == 1, message
    return message


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """Names of the archive entries actually opened for reading."""
    names, real_open = [], zipfile.ZipFile.open

    def spy(self, name, mode="r", *args, **kwargs):
        if mode == "r":
            names.append(getattr(name, "filename", name))
        return real_open(self, name, mode, *args, **kwargs)
    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    return names


# --- size limits, checked before reading or decoding ---------------------------------------

def test_entry_over_size_limit_is_refused_unread_or_skipped(tmp_path, opened):
    source = make_archive(tmp_path / "in.zip", CLASSES, per_class=20)
    rng = np.random.default_rng(1)
    add(source, {"tiny/train/happy/big.png": png(rng.integers(0, 255, (200, 200), np.uint8))})
    with pytest.raises(ValueError) as excinfo:
        run_prepare(tmp_path, source, max_entry_megabytes=0.01)
    message = one_line_error(excinfo)
    assert str(source) in message and "'tiny/train/happy/big.png'" in message
    assert "max_entry_megabytes=0.01" in message
    assert "tiny/train/happy/big.png" not in opened
    report = run_prepare(tmp_path, source, max_entry_megabytes=0.01, skip_corrupt=True)
    assert report["dropped"]["too_large"] == 1
    assert [s["name"] for s in report["skipped"]] == ["tiny/train/happy/big.png"]


def test_total_size_limit_is_checked_before_any_entry_is_read(tmp_path, opened):
    source = make_archive(tmp_path / "in.zip", CLASSES, per_class=20)
    with pytest.raises(ValueError) as excinfo:
        run_prepare(tmp_path, source, max_total_megabytes=0.05)
    assert "max_total_megabytes=0.05" in one_line_error(excinfo)
    assert opened == []


@pytest.mark.parametrize("side", [30000, 6000])  # over PIL's own bomb limit, and under it
def test_png_header_claiming_too_many_pixels_is_refused(tmp_path, side):
    with pytest.raises(ValueError, match="max_image_megapixels=25") as excinfo:
        decode(png_header(side, side), 48)
    assert excinfo.value.reason == "too_large"
    source = make_archive(tmp_path / "in.zip", CLASSES, per_class=20)
    add(source, {"tiny/train/sad/bomb.png": png_header(side, side)})
    with pytest.raises(ValueError) as excinfo:
        run_prepare(tmp_path, source)
    message = one_line_error(excinfo)
    assert str(source) in message and "'tiny/train/sad/bomb.png'" in message and "pixels" in message
    assert run_prepare(tmp_path, source, skip_corrupt=True)["dropped"]["too_large"] == 1


def test_pixel_limit_is_a_param(tmp_path):
    image = png(np.random.default_rng(0).integers(0, 255, (40, 40), np.uint8))
    assert decode(image, 48, max_pixels=1600).shape == (48, 48)
    with pytest.raises(ValueError, match="40x40 pixels"):
        decode(image, 48, max_pixels=1599)


# --- damaged entries ------------------------------------------------------------------------

def damage(path: Path, name: str, how: str) -> None:
    """Patch the last entry of a zip (`name`): encrypted flag, Deflate64 method, or a flipped byte."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    local, central = info.header_offset, raw.rfind(b"PK\x01\x02")
    if how == "encrypted":
        raw[local + 6] |= 1
        raw[central + 8] |= 1
    elif how == "deflate64":
        raw[local + 8:local + 10] = raw[central + 10:central + 12] = struct.pack("<H", 9)
    else:  # a flipped byte in the stored data: the CRC no longer matches
        start = local + 30 + len(info.filename.encode()) + len(info.extra)
        raw[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how, says", [("encrypted", "encrypted"),
                                       ("deflate64", "compression method 9"),
                                       ("crc", "Bad CRC-32")])
def test_damaged_entries_are_named_or_skipped(tmp_path, how, says):
    source = make_archive(tmp_path / "in.zip", CLASSES, per_class=20)
    name = "tiny/train/neutral/damaged.png"
    add(source, {name: png(synthetic_image(1, np.random.default_rng(3)))}, method=zipfile.ZIP_STORED)
    damage(source, name, how)
    with pytest.raises(ValueError) as excinfo:
        run_prepare(tmp_path, source)
    message = one_line_error(excinfo)
    assert str(source) in message and f"'{name}'" in message and says in message
    assert "skip_corrupt" in message
    report = run_prepare(tmp_path, source, skip_corrupt=True)
    assert report["dropped"]["unreadable"] == 1
    assert report["skipped"][0]["name"] == name and report["skipped"][0]["reason"] == "unreadable"


# --- skipped files are listed -----------------------------------------------------------------

def test_skipped_files_are_listed_with_reasons_and_capped(tmp_path, monkeypatch):
    source = make_archive(tmp_path / "in.zip", CLASSES, per_class=20)
    add(source, {"tiny/README.txt": b"about", "__MACOSX/tiny/train/happy/._000.jpg": b"meta",
                 "tiny/train/sad/broken.jpg": b"not an image"})
    report = run_prepare(tmp_path, source, skip_corrupt=True)
    written = json.loads((tmp_path / "data.json").read_text())
    assert written["skipped_count"] == 3
    assert written["skipped_by_reason"] == {"hidden": 1, "not_image": 1, "undecodable": 1}
    assert {(s["name"], s["reason"]) for s in written["skipped"]} == {
        ("tiny/README.txt", "not_image"), ("__MACOSX/tiny/train/happy/._000.jpg", "hidden"),
        ("tiny/train/sad/broken.jpg", "undecodable")}
    assert report["dropped"]["undecodable"] == 1
    monkeypatch.setattr(data, "SKIPPED_LISTED", 2)
    report = run_prepare(tmp_path, source, skip_corrupt=True)
    assert report["skipped_count"] == 3 and len(report["skipped"]) == 2


# --- layouts and split names ------------------------------------------------------------------

@pytest.mark.parametrize("val_name", ["val", "valid", "validation", "Valid"])
def test_every_common_validation_folder_name_is_read(tmp_path, val_name):
    entries = {**faces(12, "set/train/"), **faces(4, f"set/{val_name}/", seed=1),
               **faces(4, "set/test/", seed=2)}
    report = run_prepare(tmp_path, write_zip(tmp_path / "in.zip", entries))
    assert report["input_files"] == len(entries)
    manifest = pd.read_csv(tmp_path / "prepared" / "manifest.csv")
    from_val = manifest[manifest.source.str.contains(f"/{val_name}/")]
    assert len(from_val) == 16 and set(from_val.split) == {"val"}
    assert report["counts"]["val"]["total"] == 16


@pytest.mark.parametrize("stray", ["set/extra/happy/x.png", "set/x.png", "set/train/happy/sub/x.png"])
def test_images_outside_the_layout_are_refused_not_lost(tmp_path, stray):
    entries = {**faces(12, "set/train/"), stray: png(synthetic_image(0, np.random.default_rng(9)))}
    with pytest.raises(ValueError) as excinfo:
        run_prepare(tmp_path, write_zip(tmp_path / "in.zip", entries))
    message = one_line_error(excinfo)
    assert f"'{stray}'" in message and "valid" in message


@pytest.mark.parametrize("prefix", ["", "faces/"])
def test_flat_class_folders_get_seeded_stratified_splits(tmp_path, prefix):
    source = write_zip(tmp_path / "in.zip", faces(20, prefix))
    report = run_prepare(tmp_path, source)
    assert report["input_files"] == 80
    for split in ("train", "val", "test"):
        _, y, _ = load_split(tmp_path / "prepared", split)
        assert set(y) == {0, 1, 2, 3}
    again = run_prepare(tmp_path / "again", source)
    assert again["counts"] == report["counts"]


def test_folder_source_with_valid_split_and_size_limit(tmp_path):
    for name, payload in {**faces(12, "train/"), **faces(3, "valid/", seed=1),
                          **faces(3, "test/", seed=2)}.items():
        (tmp_path / "faces" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "faces" / name).write_bytes(payload)
    report = run_prepare(tmp_path, tmp_path / "faces")
    assert report["counts"]["val"]["total"] == 12
    with pytest.raises(ValueError, match=r"file 'test/happy/000.png'.*max_entry_megabytes"):
        run_prepare(tmp_path, tmp_path / "faces", max_entry_megabytes=0.0001)


def test_duplicate_entry_names_are_refused(tmp_path):
    source = write_zip(tmp_path / "in.zip", faces(12, "set/train/"))
    with pytest.warns(UserWarning, match="Duplicate name"):
        add(source, {"set/train/happy/000.png": b"other bytes"})
    with pytest.raises(ValueError, match="two entries named 'set/train/happy/000.png'"):
        list(iter_images(source))


def test_too_few_images_in_a_class_names_class_count_and_param(tmp_path):
    entries = {**faces(30, "set/train/", ["happy", "neutral", "surprise"]),
               **faces(3, "set/train/", ["sad"], seed=4)}
    with pytest.raises(ValueError) as excinfo:
        run_prepare(tmp_path, write_zip(tmp_path / "in.zip", entries))
    message = one_line_error(excinfo)
    assert "class 'sad' has 3 training images" in message and "prepare.test_fraction=0.1" in message
    assert "needs at least 10" in message


# --- decoding ---------------------------------------------------------------------------------

def test_48px_images_pass_unchanged():
    pixels = np.random.default_rng(0).integers(0, 255, (48, 48), np.uint8)
    assert np.array_equal(decode(png(pixels), 48), pixels)


def test_non_square_images_are_centre_cropped_not_squashed():
    rng = np.random.default_rng(0)
    centre = rng.integers(0, 255, (48, 48), np.uint8)
    wide = np.concatenate([np.zeros((48, 30), np.uint8), centre, np.full((48, 30), 255, np.uint8)], 1)
    assert np.array_equal(decode(png(wide), 48), centre)
    assert np.array_equal(decode(png(wide.T.copy()), 48), centre.T)
    # Larger: the centred square is area-averaged down (2x2 blocks here).
    big = np.kron(centre, np.ones((2, 2), np.uint8))
    tall = np.concatenate([np.zeros((20, 96), np.uint8), big, np.zeros((20, 96), np.uint8)])
    assert np.abs(decode(png(tall), 48).astype(int) - centre).max() <= 1


def test_16_bit_grayscale_is_scaled_not_clipped():
    pixels = np.random.default_rng(0).integers(0, 255, (48, 48)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(pixels * 257).save(buf, format="PNG")
    assert np.array_equal(decode(buf.getvalue(), 48), pixels.astype(np.uint8))


# --- data version of a folder source ----------------------------------------------------------

def test_content_hash_follows_names_and_bytes(tmp_path):
    def tree(root: Path, files: dict[str, bytes]) -> Path:
        for name, payload in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(payload)
        return root
    base = {"train/happy/a.png": b"abc", "train/sad/b.png": b"de"}
    first = content_hash(tree(tmp_path / "a", base))
    assert first == content_hash(tree(tmp_path / "b", dict(reversed(base.items()))))
    assert len(first) == 32
    assert first != content_hash(tree(tmp_path / "c", {**base, "train/sad/b.png": b"dE"}))
    assert first != content_hash(tree(tmp_path / "d", {"train/happy/a.png": b"abcd",
                                                       "train/sad/b.png": b"e"}))
    assert first != content_hash(tree(tmp_path / "e", {"train/neutral/a.png": b"abc",
                                                       "train/sad/b.png": b"de"}))
