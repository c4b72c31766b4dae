"""Reading image sources: zip archives and folders in the supported layouts, each entry
checked against size limits before it is read and decoded to gray pixels; and the content
hash that versions a folder source. Every failure is a one-line DataError naming file and entry."""
from __future__ import annotations

import copy
import hashlib
import io
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from ferpipe.errors import ImageError
from ferpipe.imageio import load_image
from ferpipe.imageio import to_gray as core_gray
from ferpipe.inference import centre_square, crop_face
from ferpipe.pipeline.config import PipelineError
from ferpipe.pipeline.pixels import needs_pil, png_shortfall, to_gray
from ferpipe.pipeline.unzip import expanded

# Folder names accepted for each split: the study's layout says "validation", others "valid".
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
LAYOUTS = ("<split>/<class>/<image> (split: train, val, valid, validation or test) "
           "or <class>/<image>, under any top folder")
# Entries that can't be read or decoded: an error, or skipped and counted under skip_corrupt.
ENTRY_REASONS = ("undecodable", "unreadable", "too_large")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
MB, MP = 1_000_000, 1_000_000


class DataError(PipelineError):
    """The input data can't be used as it is; the message is one line naming file and entry."""


class EntryError(DataError):
    """One image file or archive entry can't be read or decoded; skip_corrupt skips it."""

    def __init__(self, detail: str, reason: str, where: str = "") -> None:
        self.detail, self.reason = one_line(detail), reason
        hint = "raise that limit or " if reason == "too_large" else ""
        message = f"{where}: {self.detail}; {hint}set prepare.skip_corrupt: true to skip such files"
        super().__init__(message if where else self.detail)

    def at(self, where: str) -> EntryError:
        return EntryError(self.detail, self.reason, where)


class Skipped(NamedTuple):
    name: str
    reason: str  # one of ENTRY_REASONS, or hidden / not_image (never read)
    detail: str


def one_line(text: object, limit: int = 300) -> str:
    """Errors from PIL and zipfile may span lines or quote whole headers: one short line."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class ReadLimits:
    """Bytes per entry, bytes of all images, pixels per image (PrepareConfig's defaults)."""

    entry_bytes: int = 50 * MB
    total_bytes: int = 4096 * MB
    image_pixels: int = 25 * MP


def _check_entry_safe(archive: Path, name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{archive}: refusing archive entry {name!r} that escapes the target folder")


def _place(source: Path, names: list[str], skipped: list[Skipped]) -> dict[str, tuple[str, str]]:
    """Map each image name to (split, class) by the layout; list the files that aren't images.

    The layout is the split one if any image sits in a <split>/<class>/ folder, else the
    flat <class>/ one (all of it train). An image outside the layout is refused, not lost."""
    images = {}
    for name in names:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):  # "." has none
            skipped.append(Skipped(name, "hidden", "hidden file or macOS metadata, not read"))
        elif PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(Skipped(name, "not_image", "not an image file by its suffix, not read"))
        else:
            images[name] = parts
    by_split = any(len(p) >= 3 and p[-3].lower() in SPLIT_ALIASES for p in images.values())
    placed, stray = {}, []
    for name, parts in images.items():
        if by_split and len(parts) >= 3 and parts[-3].lower() in SPLIT_ALIASES:
            placed[name] = (SPLIT_ALIASES[parts[-3].lower()], parts[-2].lower())
        elif not by_split and len(parts) >= 2:
            placed[name] = ("train", parts[-2].lower())
        else:
            stray.append(name)
    if stray:
        raise DataError(f"{source}: {len(stray)} image(s) outside the expected layout, e.g. "
                        f"{stray[0]!r}; expected {LAYOUTS}; move or remove them")
    return placed


def _read_zip_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ReadLimits) -> bytes:
    """The entry's bytes, counted as they are decompressed here: a header's file_size may lie (a
    zip bomb), so reading stops once they pass limits.entry_bytes, holding at most that much.
    An entry whose bytes differ from its declared size is refused as damaged, so the declared
    sizes checked against limits.total_bytes are the real ones."""
    if info.flag_bits & 0x1:
        raise EntryError("encrypted (password-protected)", "unreadable")
    if info.compress_type not in ZIP_METHODS:
        method = zipfile.compressor_names.get(info.compress_type, "unknown")
        raise EntryError(f"compression method {info.compress_type} ({method}) is not supported; "
                         "re-zip with Deflate", "unreadable")
    raw = copy.copy(info)  # opened as stored: zipfile hands over the compressed bytes as they are
    raw.compress_type, raw.file_size = zipfile.ZIP_STORED, info.compress_size
    if hasattr(raw, "CRC"):
        del raw.CRC  # the CRC is of the expanded bytes, checked below
    chunks, size, crc = [], 0, 0
    try:
        with archive.open(raw) as handle:
            for chunk in expanded(handle, info.compress_type):
                size += len(chunk)
                if size > limits.entry_bytes:
                    raise EntryError(f"expands past {limits.entry_bytes / MB:g} MB, over prepare."
                                     f"max_entry_megabytes={limits.entry_bytes / MB:g} (its header "
                                     f"says {info.file_size / MB:.3g} MB)", "too_large")
                crc = zlib.crc32(chunk, crc)
                chunks.append(chunk)
        if crc != info.CRC:
            raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")
        if size != info.file_size:
            raise zipfile.BadZipFile(f"{size} bytes, not the {info.file_size} its header says")
    except EntryError:
        raise
    except Exception as err:
        raise EntryError(f"cannot read it, the archive is damaged ({type(err).__name__}: "
                         f"{one_line(err)})", "unreadable") from None
    return b"".join(chunks)


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise EntryError(f"cannot read it ({type(err).__name__}: {one_line(err)})", "unreadable") from None


def _folder_files(source: Path) -> dict[str, Path]:
    """Every file under `source` by its relative POSIX name; DataError for a symlink (to a file
    or a folder) that resolves outside it, as zip-slip is refused for archives: a source must
    not read or hash whatever a link points to. Links to folders inside are not followed."""
    root, files = source.resolve(), {}
    for path in sorted(source.rglob("*")):
        name = path.relative_to(source).as_posix()
        try:
            target = path.resolve() if path.is_symlink() else root
        except (OSError, RuntimeError):  # a link loop
            raise DataError(f"{source}: refusing symlink {name!r} that loops; remove it") from None
        if not target.is_relative_to(root):
            raise DataError(f"{source}: refusing symlink {name!r} that leads outside the source "
                            f"folder (to {target}); copy the file in or remove the link")
        if path.is_file():
            files[name] = path
    return files


def _open_zip(source: Path) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(source)
        archive.infolist()
        return archive
    except Exception as err:
        raise DataError(f"{source}: not a readable zip archive ({type(err).__name__}: "
                        f"{one_line(err)})") from None


def iter_images(source: Path, *, limits: ReadLimits | None = None, skip_corrupt: bool = False,
                skipped: list[Skipped] | None = None) -> Iterator[tuple[str, str, str, bytes]]:
    """Yield (source name, split, class, raw bytes) from a zip archive or a folder.

    Raises DataError for an image outside the layouts or over limits.total_bytes (checked
    before anything is read) and EntryError for an entry that can't be read (encrypted,
    unsupported compression, CRC error, over limits.entry_bytes); with skip_corrupt such
    entries are skipped instead. Skipped and never-read files are appended to `skipped`."""
    source, limits = Path(source), limits or ReadLimits()
    skipped = [] if skipped is None else skipped
    if source.is_dir():
        files = _folder_files(source)
        sizes = {name: path.stat().st_size for name, path in files.items()}
        yield from _iter_entries(source, sizes, lambda name: _read_file(files[name]), "file",
                                 limits, skip_corrupt, skipped)
    elif zipfile.is_zipfile(source):
        with _open_zip(source) as archive:
            infos = {}
            for info in archive.infolist():
                if info.is_dir():
                    continue
                _check_entry_safe(source, info.filename)
                if info.filename in infos:
                    raise DataError(f"{source}: two entries named {info.filename!r}; re-zip it")
                infos[info.filename] = info
            sizes = {name: info.file_size for name, info in infos.items()}
            yield from _iter_entries(source, sizes, lambda name: _read_zip_entry(archive, infos[name], limits),
                                     "entry", limits, skip_corrupt, skipped)
    elif source.exists():
        raise DataError(f"{source}: not a zip archive or a folder")
    else:
        raise FileNotFoundError(f"{source}: input data not found (run `dvc pull`?)")


def _iter_entries(source: Path, sizes: dict[str, int], read: Callable[[str], bytes], kind: str,
                  limits: ReadLimits, skip_corrupt: bool,
                  skipped: list[Skipped]) -> Iterator[tuple[str, str, str, bytes]]:
    placed = _place(source, sorted(sizes), skipped)
    total = sum(sizes[name] for name in placed)
    if total > limits.total_bytes:
        raise DataError(f"{source}: its {len(placed)} images hold {total / MB:.3g} MB, over "
                        f"prepare.max_total_megabytes={limits.total_bytes / MB:g}; raise it "
                        "if this input is meant")
    for name, (split, cls) in sorted(placed.items()):
        try:
            if sizes[name] > limits.entry_bytes:
                raise EntryError(f"{sizes[name] / MB:.3g} MB, over prepare.max_entry_megabytes="
                                 f"{limits.entry_bytes / MB:g}", "too_large")
            raw = read(name)
        except EntryError as err:
            if not skip_corrupt:
                raise err.at(f"{source}: {kind} {name!r}") from None
            skipped.append(Skipped(name, err.reason, err.detail))
            continue
        yield name, split, cls, raw


def decode(raw: bytes, image_px: int, *, max_pixels: int = ReadLimits.image_pixels) -> np.ndarray:
    """Any image -> 8-bit grayscale image_px x image_px array: the centred square, cut and
    resized by the core's crop function (INTER_AREA), as `EmotionRecognizer` takes a picture
    that is one face.

    The pixels come from the core's decoder (OpenCV: ferpipe.imageio), as a served picture's
    do; PIL reads the header and checks the whole image first (size against max_pixels before
    decoding; a truncated image is refused, not padded, with PIL's LOAD_TRUNCATED_IMAGES off
    meanwhile). Modes OpenCV would get wrong (16-bit, float, transparency) are made gray by
    PIL (ferpipe.pipeline.pixels). Raises EntryError (a ValueError; reason too_large or
    undecodable), never anything else."""
    lenient, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with warnings.catch_warnings():
            # Pixels or an error, nothing else: PIL's warnings about damaged files (and its
            # bomb warning, max_pixels being the limit) would only add lines to the output.
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(raw)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise EntryError(f"image is {width}x{height} pixels, over prepare."
                                     f"max_image_megapixels={max_pixels / MP:g}", "too_large")
                _load_whole(image, raw)
                gray = (np.asarray(to_gray(image), dtype=np.uint8) if needs_pil(image)
                        else core_gray(load_image(raw, max_pixels=max_pixels)))
        return crop_face(gray, centre_square(gray), image_px=image_px)
    except EntryError:
        raise
    except Image.DecompressionBombError as err:  # PIL refuses before max_pixels is checked
        over = (f"prepare.max_image_megapixels={max_pixels / MP:g}"
                if max_pixels < 2 * (Image.MAX_IMAGE_PIXELS or 0) else "PIL's own pixel limit")
        raise EntryError(f"image is over {over} ({one_line(err)})", "too_large") from None
    except UnidentifiedImageError:  # its message names only a BytesIO object
        raise EntryError("cannot decode image (not a known image format)", "undecodable") from None
    except ImageError as err:  # the core's decoder: its message starts with "image bytes: "
        raise EntryError(str(err).split(": ", 1)[-1], "undecodable") from None
    except Exception as err:
        raise EntryError(f"cannot decode image ({type(err).__name__}: {one_line(err)})",
                         "undecodable") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def _load_whole(image: Image.Image, raw: bytes) -> None:
    """Decode all pixels now; EntryError "damaged image: truncated" if the data ends early
    (PIL raises for most formats; a PNG whose zlib stream ends cleanly it pads with black)."""
    try:
        image.load()
    except OSError as err:
        if "truncated" not in str(err):
            raise
        raise EntryError(f"damaged image: truncated ({one_line(err)})", "undecodable") from None
    if image.format == "PNG" and (short := png_shortfall(raw)):
        raise EntryError(f"damaged image: truncated ({short})", "undecodable")


def content_hash(folder: Path | str) -> str:
    """md5 over the sorted relative paths and bytes of every file under `folder`.

    The data version of a folder source (DVC's md5 covers only tracked paths)."""
    folder, digest = Path(folder), hashlib.md5()
    for rel, path in sorted(_folder_files(folder).items()):
        # Name and length delimit each file, so moving bytes between files changes the hash.
        digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
