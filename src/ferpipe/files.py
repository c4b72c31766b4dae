"""Atomic file writes: a crash never leaves a half-written output behind."""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; move it into place only if the block succeeds."""
    path = Path(path)
    with _temporary(path) as tmp:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_paths(*paths: str | Path) -> Iterator[list[Path]]:
    """Temp paths beside each of `paths`; all moved into place only if the block succeeds, so
    outputs meant to match (data and its preview) are never left from two different runs.

    The moves are os.replace calls one after the other: a crash between two of them can still
    leave a mix, but a failed write (an exception in the block) replaces none."""
    with contextlib.ExitStack() as stack:
        temps = [stack.enter_context(_temporary(Path(p))) for p in paths]
        yield temps
        for tmp, path in zip(temps, paths):
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)


@contextlib.contextmanager
def _temporary(path: Path) -> Iterator[Path]:
    """A temp file beside `path`, named as `atomic_path` names them; removed unless moved."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _temporary_of(name: str) -> str | None:
    """The target name if `name` is one of atomic_path's temporaries, `.{target}.XXXXXXXX{suffix}`."""
    found = re.fullmatch(r"\.(.+)\.[a-z0-9_]{8}(\.[^.]*)?", name)  # mkstemp's 8 characters
    if found is None or Path(found[1]).suffix != (found[2] or ""):
        return None
    return found[1]


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries a killed write left beside `path` (`.{name}.XXXXXXXX{suffix}`)
    and, when `path` is a folder, anywhere inside it; returns the paths removed.

    Only for a stage's own outputs before it writes them: a live write's temporary looks the same."""
    path = Path(path)
    stale = [p for p in path.parent.glob(".*") if _temporary_of(p.name) == path.name]
    if path.is_dir() and not path.is_symlink():
        stale += [p for p in path.rglob(".*") if _temporary_of(p.name)]
    removed = []
    for tmp in stale:
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """An npz whose bytes depend only on the arrays (np.savez stamps the wall clock), atomically."""
    with atomic_path(path) as tmp:
        write_npz_in_place(tmp, arrays)


def write_npz_in_place(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """write_npz's file, written straight to `path`: for a temporary of `atomic_paths`."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asarray(array), allow_pickle=False)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def load_split(data_dir: Path | str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(x uint8 [N, H, W], y int64 [N], class names) of a prepared or augmented split."""
    arrays = load_npz(Path(data_dir) / f"{split}.npz")
    return arrays["x"], arrays["y"], [str(c) for c in arrays["classes"]]
