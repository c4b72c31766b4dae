"""Decoded images -> 8-bit gray for the modes the core's OpenCV decode gets wrong and PIL's
convert("L") too (16-bit and float pixels, transparency), and whether a PNG's pixel data is complete: PIL pads a PNG whose zlib
stream ends cleanly before the last row with black and says nothing (LOAD_TRUNCATED_IMAGES
or not), so `png_shortfall` counts what its IDAT chunks expand to against the header's size."""
from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type: gray, RGB, palette, gray+alpha, RGBA
# Adam7 passes: (first column, first row, column step, row step)
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _needed(width: int, height: int, bits: int, colour: int, interlaced: bool) -> int:
    """Bytes of filtered scanlines (a filter byte per row) the image's pixels take."""
    pixel_bits = bits * CHANNELS.get(colour, 1)
    passes = ADAM7 if interlaced else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        cols, rows = max(0, (width - x0 + dx - 1) // dx), max(0, (height - y0 + dy - 1) // dy)
        if cols and rows:
            total += rows * (1 + (cols * pixel_bits + 7) // 8)
    return total


def png_shortfall(raw: bytes) -> str | None:
    """'N of M rows' style text when `raw` is a PNG whose pixel data ends early, else None
    (also None when it isn't a PNG or is damaged otherwise: PIL reports that itself)."""
    if not raw.startswith(SIGNATURE):
        return None
    pos, header, inflate, got = len(SIGNATURE), None, zlib.decompressobj(), 0
    try:
        while pos + 8 <= len(raw):
            length, kind = struct.unpack(">I4s", raw[pos:pos + 8])
            data = raw[pos + 8:pos + 8 + length]
            pos += 12 + length
            if kind == b"IHDR" and len(data) >= 13:
                header = struct.unpack(">IIBBBBB", data[:13])
            elif kind == b"IDAT":
                while data:  # counted in bounded pieces: never holds the expanded pixels
                    got += len(inflate.decompress(data, 1 << 20))
                    data = inflate.unconsumed_tail
                while not inflate.eof and (more := inflate.decompress(b"", 1 << 20)):
                    got += len(more)
            elif kind == b"IEND":
                break
    except zlib.error:
        return None
    if header is None:
        return None
    width, height, bits, colour, _, _, interlace = header
    needed = _needed(width, height, bits, colour, bool(interlace))
    return f"pixel data ends after {got} of {needed} bytes" if got < needed else None


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _float_to_gray(image: Image.Image) -> Image.Image:
    """Float pixels (mode F, e.g. a float TIFF), which convert("L") would clip to near black.

    Values within 0..1 are taken as unit intensities (x255); within 0..255 as 8-bit values
    already; any other range is stretched min-max to 0..255 (it has no known scale). NaN and
    infinities count as 0."""
    pixels = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if low >= 0 and high <= 1:
        pixels = pixels * 255.0
    elif low < 0 or high > 255:
        pixels = (pixels - low) * (255.0 / (high - low))  # high > low: the range is not 0..1
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))


def needs_pil(image: Image.Image) -> bool:
    """Modes whose gray OpenCV's 8-bit colour decode would get wrong: 16-bit and other integer
    modes (clipped), float (near black) and transparency (dropped, showing what lies under it)."""
    return image.mode.startswith("I") or image.mode == "F" or _has_alpha(image)


def to_gray(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16"):  # convert("L") would clip 16-bit values at 255
        wide = np.asarray(image).astype(np.float64)
        return Image.fromarray(np.round(wide / 257.0).astype(np.uint8))
    if image.mode == "F":
        return _float_to_gray(image)
    if _has_alpha(image):  # transparent pixels are black underneath: show them as white paper
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("L")
    return image.convert("L")
