"""Turn an uploaded canvas image into the model's input, by MNIST's own recipe.

1. composite onto white (a transparent canvas and a white one give the same input);
2. grayscale and invert, so ink is bright;
3. crop to the ink's bounding box;
4. scale the longer side to 20 px, keeping the aspect ratio, with anti-aliasing
   (a thin "1" stays thin);
5. paste into a 28x28 frame so the centre of mass lands on the centre.

The result is float32 [28, 28], ink 1.0 and background 0.0: the model contract.
Only PNG and JPEG are accepted. The pixel count is checked from the header, before
anything is decoded, so a decompression bomb costs nothing.

Decoding is most of a request's CPU time. A browser canvas arrives as an 8-bit PNG:
grey from our frontend (frontend/png.js), RGBA from a plain canvas.toDataURL.
- Our frontend's grey PNG stores every row unfiltered, so its pixels are the inflated
  data less one byte per row. libdeflate inflates it in a quarter of zlib's time.
- Any other 8-bit grey or RGBA PNG is decoded by libspng (pyspng), in less than half of
  Pillow's time.
- Every other PNG (palette, 16-bit, animated, colour-keyed) and every JPEG goes through
  Pillow.
"""
import base64
import io
import struct
import zlib

import deflate
import numpy as np
import pyspng
from PIL import Image, ImageChops, JpegImagePlugin, PngImagePlugin  # noqa: F401  the only decoders we use

from .errors import ApiError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FORMATS = {PNG_SIGNATURE: "PNG", b"\xff\xd8\xff": "JPEG"}
# Recognised so we can answer "unsupported format" (415) rather than "not an image" (400).
OTHER_FORMATS = {b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP", b"II*\x00": "TIFF",
                 b"MM\x00*": "TIFF", b"\x00\x00\x01\x00": "ICO", b"qoif": "QOI", b"<svg": "SVG",
                 b"<?xml": "SVG", b"%PDF": "PDF", b"\xff\x0a": "JPEG XL"}

INK_THRESHOLD = 32   # of 255: fainter pixels (JPEG noise, a stray smudge) do not count as ink
BOX, FRAME = 20, 28  # MNIST: digit fitted in a 20x20 box, centred in a 28x28 frame
IHDR = struct.Struct(">I4sIIBBBBB")  # the first chunk: length, type, width, height, bit depth,
                                      # colour type, compression, filter and interlace methods
CHUNK = struct.Struct(">I4s")
GREY, RGBA = 0, 6  # PNG colour types


def sniff_format(data):
    """Return "PNG" or "JPEG"; raise 415 for other image formats and 400 for non-images."""
    for magic, fmt in FORMATS.items():
        if data.startswith(magic):
            return fmt
    head = data[:16]
    for magic, fmt in OTHER_FORMATS.items():
        if head.startswith(magic):
            raise ApiError(415, "unsupported_image_format",
                           f"{fmt} images are not supported; send a PNG or JPEG")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        raise ApiError(415, "unsupported_image_format", "WebP images are not supported; send a PNG or JPEG")
    if head[4:8] == b"ftyp":
        raise ApiError(415, "unsupported_image_format",
                       "HEIC/AVIF images are not supported; send a PNG or JPEG")
    if not data:
        raise ApiError(400, "not_an_image", "the image is empty (0 bytes); send a PNG or JPEG")
    raise ApiError(400, "not_an_image", "the bytes are not a PNG or JPEG image; send a PNG or JPEG")


def decode(data, max_pixels):
    """Decode PNG/JPEG ``data`` into a loaded PIL image (first frame if animated).

    Raises ApiError 400/413/415. The size is checked from the header before decoding.
    """
    fmt = sniff_format(data)
    if fmt == "PNG":
        im = _canvas_png(data, max_pixels)
        if im is not None:
            return im
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
        width, height = im.size
    except Image.DecompressionBombError:
        raise ApiError(413, "image_too_large",
                       f"the image has too many pixels; send at most {max_pixels} pixels") from None
    except Exception as e:  # Pillow raises many types on malformed headers
        raise ApiError(400, "not_an_image", f"cannot read the {fmt} header ({e}); send a complete PNG or JPEG") from None
    _check_size(width, height, max_pixels)
    try:
        im.load()
    except Image.DecompressionBombError:
        raise ApiError(413, "image_too_large",
                       f"the image has too many pixels; send at most {max_pixels} pixels") from None
    except Exception as e:
        raise ApiError(400, "not_an_image",
                       f"cannot decode the {fmt} image ({e}); send a complete, uncorrupted PNG or JPEG") from None
    return im


def _check_size(width, height, max_pixels):
    if width * height > max_pixels:
        raise ApiError(413, "image_too_large",
                       f"the image is {width}x{height} = {width * height} pixels, over the limit of "
                       f"{max_pixels}; send a smaller image (a canvas of about 280x280 is plenty)")
    if width == 0 or height == 0:
        raise ApiError(400, "not_an_image", f"the image is {width}x{height}; send a non-empty image")


def _canvas_png(data, max_pixels):
    """An 8-bit RGBA or grey, non-animated PNG (what a browser sends: our frontend's grey
    canvas, or any canvas's toDataURL) decoded into an image that shares the decoder's
    buffer; None for any other kind of PNG.

    The header is read here rather than by Pillow's parser, which costs as much again as
    the rest of this path together.
    """
    if len(data) < 8 + IHDR.size:
        return None
    length, kind, width, height, depth, colour, *methods = IHDR.unpack_from(data, 8)
    if kind != b"IHDR" or length != 13 or depth != 8 or colour not in (GREY, RGBA):
        return None
    _check_size(width, height, max_pixels)
    kinds, pixel_data = _chunks(data)
    # An animated PNG (Pillow takes its first frame), or a grey one with a transparent
    # colour key (Pillow composites it), is left to Pillow.
    if {b"acTL", b"tRNS"} & kinds:
        return None
    pixels = _unfiltered(pixel_data, width, height) if colour == GREY and methods == [0, 0, 0] else None
    if pixels is None:
        try:
            pixels = pyspng.load(data, "L" if colour == GREY else "RGBA")
        except RuntimeError as e:  # pyspng's only error type; the message names the problem
            raise ApiError(400, "not_an_image",
                           f"cannot decode the PNG image ({e}); send a complete, uncorrupted PNG or JPEG") from None
    if colour == GREY:
        return Image.frombuffer("L", (width, height), pixels, "raw", "L", 0, 1)
    # A fully opaque canvas (any browser's black on white) is RGB for our purposes: as
    # RGBX it skips the alpha handling. Read as little-endian uint32 the alpha byte is
    # the top one, so the smallest value tells, in one fast pass (Pillow would copy the
    # alpha channel out and then scan it).
    mode = "RGBX" if pixels.view("<u4").min() >= 0xFF000000 else "RGBA"
    return Image.frombuffer(mode, (width, height), pixels, "raw", mode, 0, 1)


def _chunks(data):
    """The types of the chunks before the pixel data, and the pixel data (the IDAT chunks'
    contents, one zlib stream)."""
    kinds, pixel_data, pos = set(), [], 8
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


def ink_image(im):
    """The ink as a grayscale "L" image, or None if the image is blank. Ink is the drawing
    composited onto white, grayscale, inverted; 8-bit images come back cropped to where
    anything is drawn."""
    if im.mode.startswith("I;16") or im.mode == "I":
        return _ink_16bit(im)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        im = im.convert("RGBA") if im.mode != "RGBA" else im
        # Crop to the non-transparent pixels first (one cheap pass): on a canvas most of
        # the area is transparent, and everything below then works on the drawing only.
        bbox = im.getbbox()
        if bbox is None:
            return None
        im = im.crop(bbox)
        # Composited onto white, a pixel's gray is lum*a/255 + 255 - a, so its ink
        # (255 - gray) is (255 - lum) * a / 255: the inverted gray times alpha.
        gray, alpha = im.convert("L"), im.getchannel("A")
        if gray.getbbox() is None:
            # Black ink on a transparent canvas: the ink is the alpha channel itself.
            return alpha
        return ImageChops.multiply(ImageChops.invert(gray), alpha)
    ink = ImageChops.invert(im if im.mode == "L" else im.convert("L"))
    # Crop to the ink now (one cheap pass) so the threshold in to_mnist works on the
    # drawing only, not the whole canvas.
    bbox = ink.getbbox()
    return None if bbox is None else ink.crop(bbox)


def _ink_16bit(im):
    # 16-bit grayscale: Pillow's convert("L") clips rather than scales, so scale here.
    gray = np.asarray(im, dtype=np.float32) / 257.0
    ink = 255 - np.clip(np.round(gray), 0, 255).astype(np.uint8)
    if "transparency" in im.info:  # a transparent colour key: those pixels are background
        ink[np.asarray(im) == im.info["transparency"]] = 0
    return Image.fromarray(ink, "L")


def to_mnist(im):
    """The model input for a decoded image: float32 [28, 28], ink 1.0. 422 if there is no ink."""
    ink = ink_image(im)
    # Subtracting (threshold - 1) zeroes the faint pixels, so getbbox finds real ink only
    # (Image.point would rebuild its 256-entry table in Python on every call).
    box = None if ink is None else ImageChops.subtract(ink, Image.new("L", ink.size, INK_THRESHOLD - 1)).getbbox()
    if box is None:
        raise ApiError(422, "empty_canvas", "the canvas has no ink; draw a digit first")
    ink = ink.crop(box)
    w, h = ink.size
    scale = BOX / max(w, h)
    w, h = max(1, round(w * scale)), max(1, round(h * scale))
    # Shrinking a canvas drawing about tenfold, the box filter (each output pixel is the
    # mean of the area it covers) is the anti-aliasing MNIST describes, at a quarter of
    # LANCZOS's cost. Enlarging a tiny drawing needs interpolation instead.
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    small = np.frombuffer(ink.resize((w, h), resample).tobytes(), np.uint8).reshape(h, w).astype(np.float32)
    total = small.sum()
    if total == 0:
        raise ApiError(422, "empty_canvas", "the canvas has no ink; draw a digit first")
    cy = small.sum(axis=1) @ np.arange(h, dtype=np.float32) / total
    cx = small.sum(axis=0) @ np.arange(w, dtype=np.float32) / total
    # Centre of mass onto pixel (14, 14), as in MNIST; clamp so no ink falls off the frame.
    top = min(max(int(round(FRAME / 2 - cy)), 0), FRAME - h)
    left = min(max(int(round(FRAME / 2 - cx)), 0), FRAME - w)
    out = np.zeros((FRAME, FRAME), np.float32)
    out[top:top + h, left:left + w] = small / 255.0
    return out


def preprocess(data, max_pixels):
    """Image bytes -> float32 [28, 28] model input. Raises ApiError 400/413/415/422."""
    return to_mnist(decode(data, max_pixels))


def preview_data_url(x):
    """The 28x28 input as a PNG data URL, as the model saw it: white ink on black."""
    return "data:image/png;base64," + base64.b64encode(grey_png(np.round(x * 255).astype(np.uint8))).decode()


def grey_png(pixels, level=0):
    """A uint8 [h, w] array as an 8-bit greyscale PNG, its rows unfiltered, and its zlib
    stream at compression ``level`` (default 0: stored rather than deflated).

    The frontend asks for the preview with every prediction. Pillow took 77 us to write
    this 28x28 image (41 us stored), most of it Python set-up and zlib preparing its
    tables, about a tenth of the whole request; this takes 8 us. Stored, the PNG is 400
    bytes longer than deflated, which costs nothing worth counting.
    """
    h, w = pixels.shape
    rows = np.zeros((h, w + 1), np.uint8)  # each row: filter type 0 (none), then the pixels
    rows[:, 1:] = pixels
    return b"".join((PNG_SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, GREY, 0, 0, 0)),
                     _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)), _chunk(b"IEND", b"")))


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
