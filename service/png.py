"""The PNG fast path: canvas PNGs read without Pillow, and the 28x28 preview written without it.

Decoding is most of a request's CPU time, and a browser canvas arrives as an 8-bit PNG:
grey from our frontend (frontend/png.js), RGBA from a plain canvas.toDataURL.

- ``header`` reads the IHDR chunk by hand: Pillow's parser costs as much again as the
  rest of this path together.
- ``canvas_pixels`` decodes the 8-bit grey and RGBA PNGs a browser sends. Our frontend
  stores every row unfiltered, so its pixels are the inflated data less one byte per row:
  libdeflate inflates it in a quarter of zlib's time (36-40 us against 104-113 us for a
  280x280 canvas). Any other 8-bit grey or RGBA PNG goes to libspng (pyspng), in less than
  half of Pillow's time. Everything else (palette, 16-bit, animated, colour-keyed) is left
  to Pillow: ``canvas_pixels`` returns None.
- ``frame`` and ``grey`` write PNGs: the preview is stored rather than deflated, 8 us
  against Pillow's 41-77 us for the 28x28 image.
"""
import struct
import zlib
from typing import NamedTuple

import deflate
import numpy as np
import pyspng

SIGNATURE = b"\x89PNG\r\n\x1a\n"
IHDR = struct.Struct(">I4sIIBBBBB")  # length, type, width, height, bit depth, colour type,
                                      # compression, filter and interlace methods
CHUNK = struct.Struct(">I4s")
GREY, RGBA = 0, 6  # colour types


class PNGError(ValueError):
    """The PNG is damaged; the message says how."""


class Header(NamedTuple):
    width: int
    height: int
    bit_depth: int
    colour_type: int
    plain: bool  # compression, filter and interlace methods all 0


def header(data):
    """The IHDR of PNG ``data``, or None when there is no well-formed one to read."""
    if len(data) < len(SIGNATURE) + IHDR.size or not data.startswith(SIGNATURE):
        return None
    length, kind, width, height, depth, colour, *methods = IHDR.unpack_from(data, len(SIGNATURE))
    if kind != b"IHDR" or length != 13:
        return None
    return Header(width, height, depth, colour, methods == [0, 0, 0])


def canvas_pixels(data, head):
    """The pixels of an 8-bit grey or RGBA, non-animated, not colour-keyed PNG, as uint8
    [h, w] (grey) or [h, w, 4] (RGBA); None for any other PNG. Raises PNGError when the
    image data is damaged."""
    if head.bit_depth != 8 or head.colour_type not in (GREY, RGBA):
        return None
    kinds, pixel_data = _chunks(data)
    # An animated PNG (Pillow takes its first frame), or one with a transparent colour
    # key (Pillow composites it), is left to Pillow.
    if {b"acTL", b"tRNS"} & kinds:
        return None
    if head.colour_type == GREY and head.plain:
        pixels = _unfiltered(pixel_data, head.width, head.height)
        if pixels is not None:
            return pixels
    try:
        return pyspng.load(data, "L" if head.colour_type == GREY else "RGBA")
    except RuntimeError as e:  # pyspng's only error type; the message names the problem
        raise PNGError(str(e)) from None


def _chunks(data):
    """The types of the chunks before the pixel data, and the pixel data (the IDAT chunks'
    contents, one zlib stream)."""
    kinds, pixel_data, pos = set(), [], len(SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = CHUNK.unpack_from(data, pos)
        if kind == b"IDAT":
            pixel_data.append(data[pos + 8:pos + 8 + length])
        elif kind == b"IEND":
            break
        elif not pixel_data:
            kinds.add(kind)
        pos += 12 + length  # length, type, data, CRC
    return kinds, b"".join(pixel_data)


def _unfiltered(pixel_data, width, height):
    """The pixels of an 8-bit grey PNG whose rows are all stored with filter type 0 (none),
    as frontend/png.js writes them; None if the data is anything else (libspng then
    decodes it, or names what is wrong with it).

    Each row is its filter-type byte and then the pixels, so nothing needs unfiltering.
    """
    stride = width + 1
    try:
        rows = deflate.zlib_decompress(pixel_data, height * stride)  # never writes more than that
    except deflate.DeflateError:
        return None
    if len(rows) != height * stride:
        return None
    rows = np.frombuffer(rows, np.uint8).reshape(height, stride)
    if rows[:, 0].any():
        return None
    return np.ascontiguousarray(rows[:, 1:])


def frame(rows, width, height, bit_depth=8, colour_type=GREY, level=0):
    """A PNG around ``rows``, the raw scanlines with their filter bytes, deflated at zlib
    ``level`` (0: stored). The header says what the arguments say, whatever the rows hold."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"".join((SIGNATURE, _chunk(b"IHDR", ihdr), _chunk(b"IDAT", zlib.compress(rows, level)),
                     _chunk(b"IEND", b"")))


def grey(pixels, level=0):
    """A uint8 [h, w] array as an 8-bit greyscale PNG, its rows unfiltered."""
    h, w = pixels.shape
    rows = np.zeros((h, w + 1), np.uint8)  # each row: filter type 0 (none), then the pixels
    rows[:, 1:] = pixels
    return frame(rows.tobytes(), w, h, level=level)


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
