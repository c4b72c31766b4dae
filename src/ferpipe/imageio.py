"""The one way pictures come in: a path, bytes, a data URL, a NumPy array or a PIL image ->
a BGR uint8 array (for drawing) and its gray copy (for detection and the model).

Files are decoded by OpenCV (EXIF orientation applied). Every failure is an ImageError (ferpipe.errors), a
ValueError whose message is one line naming the file: a 0-byte file, a header over the pixel
limit, a damaged image. Whether bytes are an image is decided by their magic number, so a
truncated JPEG is a damaged image, never a "video".
"""
from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ferpipe.errors import ImageError

Channels = Literal["BGR", "RGB"]
# A 100-megapixel photo decodes to 300 MB of BGR; bigger is almost surely a mistake or a bomb.
MAX_PIXELS = 100_000_000
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".3gp"}
_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF87a": "GIF", b"GIF89a": "GIF",
          b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def image_format(data: bytes) -> str | None:
    """'JPEG', 'PNG', ... by the magic number, or None for bytes that are no known image."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _MAGIC.items() if data.startswith(magic)), None)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of any format Pillow opens (it reads the size without
    decoding pixels), or None for bytes it cannot size."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its bomb warning: the caller applies its own limit
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError:
        return (1 << 16, 1 << 16)  # over twice Pillow's own limit: over any limit of ours too
    except Exception:  # any format Pillow cannot parse; the caller refuses it
        return None


def _quiet_opencv() -> None:
    """OpenCV's and FFmpeg's warnings about damaged files would only add lines to ours."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def decode_bytes(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> BGR uint8 [H, W, 3]."""
    import cv2

    _quiet_opencv()
    if len(data) == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")
    size = header_size(data)
    kind = image_format(data)
    if size is None:  # what the decoder might still read, the limit could not be checked on
        raise ImageError(f"{name}: damaged {kind} image" if kind else
                         f"{name}: not an image (JPEG, PNG, BMP, GIF, TIFF or WebP)")
    if size[0] * size[1] > max_pixels:
        raise ImageError(f"{name}: image is {size[0]}x{size[1]} pixels, over the limit of "
                         f"{max_pixels / 1e6:g} megapixels")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as err:
        raise ImageError(f"{name}: cannot decode image ({' '.join(str(err).split())[-160:]})") from None
    if image is None:
        raise ImageError(f"{name}: damaged {kind} image" if kind else
                         f"{name}: not an image (JPEG, PNG, BMP, GIF, TIFF or WebP)")
    return image


def channel_order(channels: str) -> Channels:
    """'BGR' or 'RGB' (either case); anything else is an ImageError naming it."""
    order = str(channels).upper()
    if order not in ("BGR", "RGB"):
        raise ImageError(f"channels={channels!r}: expected 'BGR' (as OpenCV reads) or 'RGB' (as PIL does)")
    return order  # type: ignore[return-value]


def _from_array(array: np.ndarray, channels: Channels, name: str) -> np.ndarray:
    import cv2

    image = np.asarray(array)
    if image.size == 0:
        raise ImageError(f"{name}: empty array (shape {list(image.shape)})")
    if image.dtype != np.uint8:
        if image.dtype.kind not in "uif":
            raise ImageError(f"{name}: expected an image array of numbers, got dtype {image.dtype}")
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            raise ImageError(f"{name}: the array holds NaN or infinite values")
        scale = 1 / 257 if image.dtype == np.uint16 else 1.0
        if image.dtype.kind == "f" and np.nanmax(image) <= 1.0:
            scale = 255.0  # a float image in 0..1
        image = np.clip(np.nan_to_num(image.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ImageError(f"{name}: expected HxW gray or HxWx3/HxWx4 colour, got shape {list(image.shape)}")
    if image.shape[2] == 4:  # composite on white: transparent margins are not black faces
        alpha = image[..., 3:4].astype(np.float32) / 255.0
        image = (image[..., :3].astype(np.float32) * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    return image[..., ::-1].copy() if channels == "RGB" else np.ascontiguousarray(image)


def load_image(image: Any, channels: Channels = "BGR", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any supported picture -> BGR uint8 [H, W, 3].

    `image`: a file path (str or Path), encoded bytes, a `data:image/...;base64,` URL, a NumPy
    array (HxW gray, or HxWx3 / HxWx4 colour in `channels` order: "BGR" as OpenCV reads,
    "RGB" as PIL, imageio and matplotlib do) or a PIL image (its own mode is used)."""
    channels = channel_order(channels)  # checked for every input, used for arrays
    if isinstance(image, str) and image.startswith("data:"):
        try:
            return decode_bytes(base64.b64decode(image.split(",", 1)[1], validate=True), "data URL",
                                max_pixels)
        except (IndexError, binascii.Error):
            raise ImageError("data URL: not base64 image data") from None
    if isinstance(image, str | Path):
        path = Path(image)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise ImageError(f"{path}: is a folder, not an image") from None
        except OSError as err:
            raise ImageError(f"{path}: cannot read it ({err.strerror or err})") from None
        return decode_bytes(data, str(path), max_pixels)
    if isinstance(image, bytes | bytearray | memoryview):
        return decode_bytes(bytes(image), "image bytes", max_pixels)
    if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image, without importing PIL
        return _from_array(np.asarray(image.convert("RGBA" if "A" in image.mode else "RGB")),
                           "RGB", "PIL image")
    if isinstance(image, np.ndarray):
        return _from_array(image, channels, "array")
    raise TypeError(f"expected a path, bytes, a NumPy array or a PIL image, got {type(image).__name__}")


def to_gray(image: np.ndarray) -> np.ndarray:
    """BGR [H, W, 3] (or already gray [H, W]) uint8 -> gray [H, W] uint8."""
    import cv2

    image = np.asarray(image)
    if image.ndim == 2 and image.dtype == np.uint8:
        return image
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return to_gray(_from_array(image, "BGR", "array"))


def is_video(path: Path) -> bool:
    """Whether FFmpeg can decode a frame of `path` (never called for bytes that are an image)."""
    import cv2

    _quiet_opencv()
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        return capture.isOpened() and capture.grab()
    finally:
        capture.release()
