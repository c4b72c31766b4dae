"""Property-based tests: whatever bytes come in, the image and archive readers either give
48x48 uint8 pixels or raise the project's own one-line error (data.DataError, a ValueError).

Examples are derandomized, so CI sees the same ones every run; FERPIPE_FUZZ_EXAMPLES=2000
explores new random ones (hypothesis prints the failing example to reproduce)."""
import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from ferpipe.pipeline.data import DataError, decode, iter_images

pytestmark = pytest.mark.filterwarnings("error")  # a warning would be a second line of output
EXAMPLES = int(os.environ.get("FERPIPE_FUZZ_EXAMPLES", "0"))
fuzz = settings(max_examples=EXAMPLES or 60, deadline=None, derandomize=not EXAMPLES,
                database=None, suppress_health_check=[HealthCheck.too_slow])
# Formats that can save each mode (PIL converts some on save, e.g. L to P for GIF).
FORMATS = {"L": ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"], "RGB": ["PNG", "JPEG", "BMP", "TIFF", "WEBP"],
           "RGBA": ["PNG", "TIFF", "WEBP"], "P": ["PNG", "BMP", "GIF", "TIFF"],
           "I;16": ["PNG", "TIFF"], "1": ["PNG", "BMP", "TIFF"]}


@st.composite
def images(draw) -> bytes:
    """A valid image file of random size, mode, format and pixels."""
    mode = draw(st.sampled_from(sorted(FORMATS)))
    fmt = draw(st.sampled_from(FORMATS[mode]))
    width, height = draw(st.integers(1, 120)), draw(st.integers(1, 120))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def decodes_or_says_why(raw: bytes) -> None:
    try:
        pixels = decode(raw, 48)
    except DataError as err:
        assert len(str(err).splitlines()) == 1 and str(err), repr(str(err))
    else:
        assert pixels.shape == (48, 48) and pixels.dtype == np.uint8


@fuzz
@given(images())
def test_valid_images_of_any_size_and_mode_decode(raw):
    pixels = decode(raw, 48)
    assert pixels.shape == (48, 48) and pixels.dtype == np.uint8


@fuzz
@given(st.binary(max_size=2048))
def test_random_bytes_give_pixels_or_a_one_line_error(raw):
    decodes_or_says_why(raw)


@fuzz
@given(images(), st.data())
def test_truncated_or_damaged_images_give_pixels_or_a_one_line_error(raw, data):
    cut = data.draw(st.integers(0, len(raw)))
    decodes_or_says_why(raw[:cut])
    damaged = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8))):
        damaged[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    decodes_or_says_why(bytes(damaged))


def read_all(path: Path, skip_corrupt: bool) -> None:
    """Everything `prepare` does with an archive before cleaning: list, read, decode."""
    try:
        for _, split, _, raw in iter_images(path, skip_corrupt=skip_corrupt, skipped=[]):
            assert split in ("train", "val", "test")
            decodes_or_says_why(raw)
    except DataError as err:
        assert len(str(err).splitlines()) == 1 and str(err), repr(str(err))


# zipfile cuts a name at its first NUL and can't write an empty one.
names = st.lists(st.text(min_size=1, max_size=30).filter(lambda n: not n.startswith("\x00")),
                 min_size=1, max_size=4)
entry = st.tuples(st.sampled_from(["set/train/happy/", "set/valid/sad/", "test/neutral/", "happy/", ""]),
                  st.sampled_from(["a.png", "b.jpg", "c.txt", ".hidden.png"]),
                  st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2]))


@fuzz
@given(st.lists(entry, min_size=1, max_size=5, unique_by=lambda e: e[0] + e[1]), images(), st.data())
def test_damaged_archives_give_images_or_a_one_line_error(entries, image, data):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for folder, name, method in entries:
            archive.writestr(folder + name, image, compress_type=method)
    raw = bytearray(buf.getvalue())
    how = data.draw(st.sampled_from(["intact", "truncated", "overwritten"]))
    if how == "truncated":
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    elif how == "overwritten":
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.zip"
        path.write_bytes(bytes(raw))
        read_all(path, data.draw(st.booleans()))


@fuzz
@given(names, st.binary(max_size=64))
@example(["."], b"")  # found by fuzzing: a name with no parts
def test_any_entry_names_give_images_or_a_one_line_error(entry_names, payload):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for name in dict.fromkeys(entry_names):
                archive.writestr(name, payload)
        read_all(path, skip_corrupt=True)
