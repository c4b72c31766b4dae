"""Zip entries decompressed in bounded pieces, so a reader can count what an entry really
expands to (its header's file_size may lie) and stop at a limit holding little memory."""
from __future__ import annotations

import bz2
import io
import zipfile
import zlib
from collections.abc import Iterator

CHUNK = 1 << 20  # the most bytes one piece expands to (LZMA: see below)


def expanded(handle: io.BufferedIOBase, method: int) -> Iterator[bytes]:
    """The decompressed bytes of a raw (still compressed) entry stream, in pieces of at most
    CHUNK bytes: zipfile's own bzip2 and LZMA reads have no output bound, so one 4 KiB read of a
    bomb may expand to gigabytes before its declared size is checked."""
    pieces = iter(lambda: handle.read(1 << 16), b"")
    if method == zipfile.ZIP_STORED:
        yield from iter(lambda: handle.read(CHUNK), b"")
    elif method == zipfile.ZIP_DEFLATED:
        inflate = zlib.decompressobj(-15)
        for data in pieces:
            while True:  # output pending while the tail is unread or the last chunk was full
                out = inflate.decompress(data, CHUNK)
                yield out
                data = inflate.unconsumed_tail
                if not data and len(out) < CHUNK:
                    break
        yield inflate.flush()
    elif method == zipfile.ZIP_BZIP2:
        unbzip = bz2.BZ2Decompressor()
        for data in pieces:
            yield unbzip.decompress(data, CHUNK)
            while not unbzip.eof and not unbzip.needs_input:
                yield unbzip.decompress(b"", CHUNK)
            if unbzip.eof:
                break
    else:  # LZMA: zipfile's decompressor takes no output bound; 1 KiB in is at most ~8 MB out
        unlzma = zipfile._get_decompressor(method)  # parses the zip's LZMA properties header
        yield from (unlzma.decompress(data) for data in iter(lambda: handle.read(1024), b""))
