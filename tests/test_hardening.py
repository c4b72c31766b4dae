"""Hardening: zip bombs, OS errors and interrupts in stages, stale temporaries, paired outputs,
symlinks out of a folder source, decoder quality, input paths checked before MLflow starts."""
from __future__ import annotations

import errno
import io
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from ferpipe.files import atomic_path, write_npz
from ferpipe.pipeline.config import ConfigError, run_main
from ferpipe.pipeline.images import DataError, EntryError, ReadLimits, Skipped, decode, iter_images

ROOT = Path(__file__).resolve().parents[1]
NAME = "set/train/happy/bomb.png"


# --- zip bombs: entries whose header understates what they expand to -------------------------

def lying_zip(path: Path, method: int, size: int, claim: int = 1000) -> Path:
    """A zip of one entry of `size` zero bytes whose local and central headers say `claim`."""
    with zipfile.ZipFile(path, "w", method) as archive:
        archive.writestr(NAME, bytes(size))
        [info] = archive.infolist()
        info.file_size = claim  # the central directory is written on close, from this
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, info.header_offset + 22, claim)  # the local header's file_size
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2], ids=["deflate", "bzip2"])
def test_zip_entry_expanding_past_its_header_is_too_large_with_little_memory(tmp_path, method):
    source = lying_zip(tmp_path / "bomb.zip", method, size=20_000_000)
    limits = ReadLimits(entry_bytes=1_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(EntryError) as excinfo:
            list(iter_images(source, limits=limits))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(excinfo.value) == (
        f"{source}: entry '{NAME}': expands past 1 MB, over prepare.max_entry_megabytes=1 (its "
        "header says 0.001 MB); raise that limit or set prepare.skip_corrupt: true to skip such files")
    assert excinfo.value.reason == "too_large"
    assert peak < 8_000_000  # zipfile's own bzip2 read holds all 20 MB at once
    skipped: list[Skipped] = []
    assert list(iter_images(source, limits=limits, skip_corrupt=True, skipped=skipped)) == []
    assert [(s.name, s.reason) for s in skipped] == [(NAME, "too_large")]


def test_zip_entry_smaller_than_its_header_says_is_damaged(tmp_path):
    source = lying_zip(tmp_path / "short.zip", zipfile.ZIP_DEFLATED, size=500, claim=1000)
    with pytest.raises(EntryError) as excinfo:
        list(iter_images(source))
    assert str(excinfo.value) == (
        f"{source}: entry '{NAME}': cannot read it, the archive is damaged (BadZipFile: 500 bytes, "
        "not the 1000 its header says); set prepare.skip_corrupt: true to skip such files")


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                    zipfile.ZIP_LZMA])
def test_zip_entries_read_in_pieces_are_the_bytes_written(tmp_path, method):
    payloads = {"set/train/happy/a.png": os.urandom(2_500_000), "set/train/sad/b.png": b"ab" * 1_500_000,
                "set/train/sad/empty.png": b""}
    with zipfile.ZipFile(tmp_path / "in.zip", "w", method) as archive:
        for name, data in payloads.items():
            archive.writestr(name, data)
    assert {name: raw for name, _, _, raw in iter_images(tmp_path / "in.zip")} == payloads


# --- stage errors: one line for the project's and the OS's, a traceback for bugs -------------

def run_stage(capsys, error: BaseException) -> tuple[int, list[str]]:
    def main() -> None:
        raise error

    with pytest.raises(SystemExit) as excinfo:
        run_main(main)
    return excinfo.value.code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("error, line", [
    (OSError(errno.ENOSPC, "No space left on device", "out/x.npz"),
     "error: out/x.npz: No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied", "models/m.keras"),
     "error: models/m.keras: Permission denied"),
    (OSError(errno.EROFS, "Read-only file system", ".m.keras.abc", None, "models/m.keras"),  # rename
     "error: .m.keras.abc -> models/m.keras: Read-only file system"),
    (FileNotFoundError("data/x.zip: input data not found (run `dvc pull`?)"),
     "error: data/x.zip: input data not found (run `dvc pull`?)"),
    (ConfigError("params.yaml:train.batch_size: 0 is out of range [1, inf)"),
     "error: params.yaml:train.batch_size: 0 is out of range [1, inf)"),
    (DataError("data/x.zip: two entries named 'a.png'; re-zip it"),
     "error: data/x.zip: two entries named 'a.png'; re-zip it"),
])
def test_stage_errors_of_the_project_and_the_os_are_one_line(capsys, error, line):
    assert run_stage(capsys, error) == (1, [line])


def test_project_errors_from_other_modules_are_one_line(capsys):
    from ferpipe.imageio import ImageError
    from ferpipe.pipeline.tracking import TrackingError

    assert run_stage(capsys, TrackingError("mlflow.db: is not writable")) == (1, ["error: mlflow.db: is not writable"])
    assert run_stage(capsys, ImageError("a.png: empty file")) == (1, ["error: a.png: empty file"])


def test_interrupted_stage_says_so_and_exits_130(capsys):
    assert run_stage(capsys, KeyboardInterrupt()) == (130, ["error: interrupted"])


@pytest.mark.proc
def test_a_library_value_error_keeps_its_traceback(tmp_path):
    script = textwrap.dedent("""
        from ferpipe.pipeline.config import run_main
        def main():
            raise ValueError("Input 0 of layer dense is incompatible with the layer")
        run_main(main)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "ValueError: Input 0 of layer dense is incompatible with the layer")


# --- stale temporaries of killed atomic writes ------------------------------------------------

def leave_temporary(path: Path) -> Path:
    """What a kill -9 inside `atomic_path(path)` leaves: its temporary, half written."""
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        kept = tmp.with_name(tmp.name + ".kept")
        os.link(tmp, kept)
        raise KeyboardInterrupt
    kept.rename(tmp)
    return tmp


def test_stale_temporaries_beside_and_inside_outputs_are_removed(tmp_path):
    from ferpipe.files import remove_stale_temporaries

    out_file, out_dir = tmp_path / "metrics" / "data.json", tmp_path / "prepared"
    (out_dir / "fer").mkdir(parents=True)
    stale = [leave_temporary(out_file), leave_temporary(out_dir / "fer" / "train.npz"),
             leave_temporary(out_dir / "manifest.csv")]
    keep = [out_dir / ".gitignore", out_dir / "fer" / ".hidden.txt", tmp_path / "metrics" / "other.json",
            leave_temporary(tmp_path / "metrics" / "other.json")]  # another output's temporary
    for path in keep[:3]:
        path.write_text("keep")
    assert all(path.name.startswith(".") and path.exists() for path in stale)
    removed = remove_stale_temporaries(out_file) + remove_stale_temporaries(out_dir)
    assert sorted(removed) == sorted(stale)
    assert not any(path.exists() for path in stale) and all(path.exists() for path in keep)


def test_stage_run_removes_its_own_outputs_stale_temporaries_first(tmp_path, monkeypatch):
    from ferpipe.pipeline import lineage, tracking

    (tmp_path / "dvc.yaml").write_text(textwrap.dedent("""
        stages:
          train:
            foreach: [a, b]
            do:
              cmd: python train.py ${key}
              outs:
                - models/${key}/model.keras
                - metrics/${key}.json:
                    cache: false
          tune:
            cmd: python tune.py
            outs:
              - tuning:
                  persist: true
              - metrics/tune.json
    """))
    monkeypatch.chdir(tmp_path)
    for folder in ("models/a", "models/b", "metrics", "tuning"):
        Path(folder).mkdir(parents=True)
    mine = [leave_temporary(Path("models/a/model.keras")), leave_temporary(Path("metrics/a.json"))]
    others = [leave_temporary(Path("models/b/model.keras")), leave_temporary(Path("tuning/t.json"))]
    assert lineage.stage_outputs("train", "a") == [Path("models/a/model.keras"), Path("metrics/a.json")]
    assert lineage.stage_outputs("tune") == [Path("metrics/tune.json")]  # persist: in use across runs

    def no_store(*_):
        raise RuntimeError("stop before MLflow")

    monkeypatch.setattr(tracking, "use_tracking", no_store)
    with pytest.raises(RuntimeError, match="stop before MLflow"), \
            tracking.stage_run("train", {}, "data", run_name="a"):
        pass
    assert not any(p.exists() for p in mine) and all(p.exists() for p in others)


# --- outputs replaced together ----------------------------------------------------------------

def test_atomic_paths_replace_all_or_none(tmp_path):
    from ferpipe.files import atomic_paths

    first, second = tmp_path / "a.npz", tmp_path / "b.png"
    first.write_text("old a")
    second.write_text("old b")
    with pytest.raises(OSError, match="No space"), atomic_paths(first, second) as (tmp_a, tmp_b):
        tmp_a.write_text("new a")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_b))
    assert (first.read_text(), second.read_text()) == ("old a", "old b")
    with atomic_paths(first, second) as (tmp_a, tmp_b):
        tmp_a.write_text("new a")
        tmp_b.write_text("new b")
    assert (first.read_text(), second.read_text()) == ("new a", "new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.png"]


def test_augment_replaces_neither_output_when_the_preview_fails(tmp_path, monkeypatch):
    from ferpipe.pipeline import augment as augment_module
    from ferpipe.pipeline.augment import AugmentConfig, augment

    rng = np.random.default_rng(0)
    write_npz(tmp_path / "prepared" / "train.npz", x=rng.integers(0, 256, (6, 48, 48), dtype=np.uint8),
              y=np.array([0, 1, 0, 1, 0, 1]), classes=np.array(["happy", "sad"]))
    data, preview = tmp_path / "augmented" / "train.npz", tmp_path / "plots" / "preview.png"
    data.parent.mkdir()
    preview.parent.mkdir()
    data.write_bytes(b"old data")
    preview.write_bytes(b"old preview")

    def preview_fails(x, cfg, path):
        Path(path).write_bytes(b"half a png")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(augment_module, "save_preview", preview_fails)
    with pytest.raises(OSError, match="No space left on device"):
        augment(AugmentConfig(copies=1, preview_images=2), tmp_path / "prepared", data.parent, preview)
    assert (data.read_bytes(), preview.read_bytes()) == (b"old data", b"old preview")
    assert sorted(p.name for p in [*data.parent.iterdir(), *preview.parent.iterdir()]) == [
        "preview.png", "train.npz"]  # no temporaries left


# --- folder sources: symlinks out of the folder -----------------------------------------------

def png(value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((48, 48), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_folder_source_refuses_a_symlink_leading_outside(tmp_path, kind):
    source, outside = tmp_path / "faces", tmp_path / "outside"
    (source / "train" / "happy").mkdir(parents=True)
    (source / "train" / "happy" / "a.png").write_bytes(png())
    (outside / "sad").mkdir(parents=True)
    (outside / "sad" / "secret.png").write_bytes(png(9))
    if kind == "file":
        link, target = source / "train" / "happy" / "b.png", outside / "sad" / "secret.png"
    else:
        link, target = source / "train" / "sad", outside / "sad"
    link.symlink_to(target)
    rel = link.relative_to(source).as_posix()
    with pytest.raises(DataError) as excinfo:
        list(iter_images(source))
    assert str(excinfo.value) == (f"{source}: refusing symlink '{rel}' that leads outside the source "
                                  f"folder (to {target}); copy the file in or remove the link")


def test_folder_source_reads_a_symlink_inside_it(tmp_path):
    source = tmp_path / "faces"
    (source / "train" / "happy").mkdir(parents=True)
    (source / "train" / "happy" / "a.png").write_bytes(png())
    (source / "train" / "happy" / "b.png").symlink_to(source / "train" / "happy" / "a.png")
    assert [name for name, *_ in iter_images(source)] == ["train/happy/a.png", "train/happy/b.png"]


# --- decoding: float pixels, truncation, transparency -----------------------------------------

def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("low, high, expect", [(0.0, 1.0, (0, 255)),   # unit floats: x255
                                               (10.0, 200.0, (10, 200)),  # already 8-bit values
                                               (-1.0, 3.0, (0, 255))])  # unknown scale: min-max
def test_float_tiff_is_scaled_by_its_range_not_clipped_to_black(low, high, expect):
    ramp = np.linspace(low, high, 48 * 48, dtype=np.float32).reshape(48, 48)
    pixels = decode(encoded(Image.fromarray(ramp, "F"), "TIFF"), 48)
    assert (int(pixels.min()), int(pixels.max())) == expect
    assert abs(float(pixels.mean()) - (expect[0] + expect[1]) / 2) < 2


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_png_whose_pixel_data_ends_cleanly_early_is_undecodable():
    rows = b"".join(b"\0" + bytes([200]) * 48 for _ in range(10))  # 10 of its 48 rows
    raw = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 48, 48, 8, 0, 0, 0, 0))
           + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))
    with pytest.raises(EntryError) as excinfo:
        decode(raw, 48)
    assert (str(excinfo.value), excinfo.value.reason) == (
        "damaged image: truncated (pixel data ends after 490 of 2352 bytes)", "undecodable")


def test_truncated_jpeg_is_undecodable_even_if_pil_was_told_to_allow_it(monkeypatch):
    noise = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    raw = encoded(Image.fromarray(noise), "JPEG")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # another library's setting
    with pytest.raises(EntryError) as excinfo:
        decode(raw[: len(raw) // 2], 48)
    assert str(excinfo.value).startswith("damaged image: truncated (image file is truncated")
    assert excinfo.value.reason == "undecodable" and ImageFile.LOAD_TRUNCATED_IMAGES is True


def half_transparent(mode: str) -> bytes:
    """Black pixels, the bottom half fully transparent."""
    alpha = np.zeros((48, 48), np.uint8)
    alpha[:24] = 255
    if mode == "P":
        index = (alpha == 0).astype(np.uint8)  # palette entry 1 is the transparent one
        image = Image.fromarray(index, "P")
        image.putpalette([0, 0, 0, 0, 0, 0])
        return encoded(image, "PNG", transparency=1)
    black = np.zeros((48, 48, 3 if mode == "RGBA" else 1), np.uint8)
    return encoded(Image.fromarray(np.dstack([black, alpha]), mode), "PNG")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_are_composited_on_white(mode):
    pixels = decode(half_transparent(mode), 48)
    assert (int(pixels[:24].max()), int(pixels[24:].min())) == (0, 255)


# --- input paths checked before MLflow and TensorFlow start -----------------------------------

def test_missing_transfer_weights_file_is_named_by_its_params_key(tmp_path):
    from ferpipe.pipeline.params import TransferSpec, check_weights_file

    missing = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"
    spec = TransferSpec(backbone="mobilenet_v2", alpha=0.5, weights=str(missing))
    with pytest.raises(FileNotFoundError) as excinfo:
        check_weights_file(spec, "mobilenet_v2_050")
    assert str(excinfo.value) == (
        f"params.yaml:transfer.mobilenet_v2_050.weights: file '{missing}' not found; run `dvc pull`, "
        "put the official Keras '_no_top' .h5 file there, or set weights: imagenet where a network exists")
    missing.write_bytes(b"h5")
    check_weights_file(spec, "mobilenet_v2_050")
    for word in ("imagenet", "none"):
        check_weights_file(TransferSpec(backbone="mobilenet_v2", weights=word), "x")


@pytest.mark.proc
def test_transfer_stage_checks_its_weights_file_before_tensorflow_loads(tmp_path):
    (tmp_path / "params.yaml").write_text(textwrap.dedent("""
        transfer:
          m: {backbone: mobilenet_v2, alpha: 0.5, weights: missing_0.5_224_no_top.h5}
        train: {}
    """))
    script = ("import runpy, sys; sys.argv = ['transfer.py', 'm']; "
              f"runpy.run_path({str(ROOT / 'stages' / 'transfer.py')!r}, run_name='__main__'); "
              "print('tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: params.yaml:transfer.m.weights: file 'missing_0.5_224_no_top.h5' not found; run `dvc "
        "pull`, put the official Keras '_no_top' .h5 file there, or set weights: imagenet where a "
        "network exists"]


def test_a_server_that_accepts_and_never_answers_is_reported_within_15_s(monkeypatch):
    import socket
    import time

    from ferpipe.pipeline.tracking import TrackingError, use_tracking

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections (the kernel does), never replies
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
    start = time.monotonic()
    try:
        with pytest.raises(TrackingError, match=r"is unreachable \(no reply within 8 s; raise "
                                                 r"MLFLOW_HTTP_REQUEST_TIMEOUT for a slow server\)"):
            use_tracking(uri)
    finally:
        listener.close()
    assert time.monotonic() - start < 15


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")
def test_a_store_path_that_looks_writable_but_is_not_fails_at_once():
    import time

    from ferpipe.pipeline.tracking import TrackingError, use_tracking

    start = time.monotonic()
    with pytest.raises(TrackingError, match=r"^/proc/ferpipe-x\.db: the MLflow tracking database "
                                            r"cannot be written: /proc is not writable"):
        use_tracking("sqlite:////proc/ferpipe-x.db")
    assert time.monotonic() - start < 10
