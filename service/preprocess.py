"""Turn an uploaded canvas image into the model's input: decode it, then cut its ink down to
28x28 by MNIST's own recipe (service/ink.py, the step training shares).

The result is the model's input for one image (service/contract.py): float32 [28, 28],
ink 1.0 and background 0.0. Only PNG and JPEG are accepted. The pixel count is checked
from the header, before anything is decoded, so a decompression bomb costs nothing.
Browser canvases are decoded by service/png.py; every other image by Pillow.
"""
import base64
import io

from PIL import Image, JpegImagePlugin, PngImagePlugin  # noqa: F401  the only decoders we use

from . import contract, ink, png
from .errors import ApiError

FORMATS = {png.SIGNATURE: "PNG", b"\xff\xd8\xff": "JPEG"}
# Recognised so we can answer "unsupported format" (415) rather than "not an image" (400).
OTHER_FORMATS = {b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP", b"II*\x00": "TIFF",
                 b"MM\x00*": "TIFF", b"\x00\x00\x01\x00": "ICO", b"qoif": "QOI", b"<svg": "SVG",
                 b"<?xml": "SVG", b"%PDF": "PDF", b"\xff\x0a": "JPEG XL"}

PROGRESSIVE_COST = 4  # a progressive JPEG took 2-4x a baseline one's time per pixel (docs/serving.md)


def sniff_format(data):
    """Return "PNG" or "JPEG"; raise 415 for other image formats and 400 for non-images."""
    for magic, fmt in FORMATS.items():
        if data.startswith(magic):
            return fmt
    head = data[:16]
    for magic, fmt in OTHER_FORMATS.items():
        if head.startswith(magic):
            raise ApiError("unsupported_image_format",
                           f"{fmt} images are not supported; send a PNG or JPEG")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        raise ApiError("unsupported_image_format", "WebP images are not supported; send a PNG or JPEG")
    if head[4:8] == b"ftyp":
        raise ApiError("unsupported_image_format",
                       "HEIC/AVIF images are not supported; send a PNG or JPEG")
    if not data:
        raise ApiError("not_an_image", "the image is empty (0 bytes); send a PNG or JPEG")
    raise ApiError("not_an_image", "the bytes are not a PNG or JPEG image; send a PNG or JPEG")


class Limits:
    """What the images of one request may cost to decode, checked from their headers before
    any decoding: each image at most ``pixels`` (width x height) and ``side`` on its longer
    side, and all of them together at most ``total`` pixels. A progressive JPEG counts
    PROGRESSIVE_COST times its pixels: it takes that much longer to decode."""

    def __init__(self, pixels, side=None, total=None):
        self.pixels, self.side = pixels, side
        self.left = total

    def charge(self, width, height, fmt, progressive=False):
        if width == 0 or height == 0:
            raise ApiError("not_an_image", f"the image is {width}x{height}; send a non-empty image")
        if self.side is not None and max(width, height) > self.side:
            raise ApiError("image_too_large", f"the image is {width}x{height}, longer than {self.side} px on a side; "
                                              "send a smaller image (a canvas of about 280x280 is plenty)")
        cost = width * height * (PROGRESSIVE_COST if progressive else 1)
        if cost > self.pixels:
            what = f"a progressive {fmt} of {width}x{height} counts as {cost}" if progressive else \
                f"the image is {width}x{height} = {cost}"
            raise ApiError("image_too_large", f"{what} pixels, over the limit of {self.pixels}; send a smaller "
                                              "image (a canvas of about 280x280 is plenty)")
        if self.left is not None:
            if cost > self.left:
                raise ApiError("image_too_large", "the images of this request hold more pixels together than the "
                                                  "limit per request; send fewer or smaller images")
            self.left -= cost


def size(data):
    """(width, height, format, progressive) of PNG/JPEG ``data`` from its header alone.
    Raises ApiError 400/415 as ``decode`` would."""
    fmt = sniff_format(data)
    head = png.header(data) if fmt == "PNG" else None
    if head is not None:
        return head.width, head.height, fmt, False
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            return im.size[0], im.size[1], fmt, bool(im.info.get("progression"))
    except Image.DecompressionBombError:  # over Pillow's own bound: charging it says 413
        return 1 << 16, 1 << 16, fmt, False
    except Exception as e:  # Pillow raises many types on malformed headers
        raise ApiError("not_an_image", f"cannot read the {fmt} header ({e}); send a complete PNG or JPEG") from None


def decode(data, limits):
    """Decode PNG/JPEG ``data`` into a loaded PIL image (first frame if animated).

    Raises ApiError 400/413/415. ``limits`` (Limits) is charged from the header before
    anything is decoded.
    """
    fmt = sniff_format(data)
    head = png.header(data) if fmt == "PNG" else None
    if head is not None:
        limits.charge(head.width, head.height, fmt)
        im = _canvas_png(data, head)
        if im is not None:
            return im
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
        width, height = im.size
    except Image.DecompressionBombError:
        raise ApiError("image_too_large",
                       f"the image has too many pixels; send at most {limits.pixels} pixels") from None
    except Exception as e:  # Pillow raises many types on malformed headers
        raise ApiError("not_an_image", f"cannot read the {fmt} header ({e}); send a complete PNG or JPEG") from None
    if head is None:
        limits.charge(width, height, fmt, progressive=bool(im.info.get("progression")))
    try:
        im.load()
    except Image.DecompressionBombError:
        raise ApiError("image_too_large",
                       f"the image has too many pixels; send at most {limits.pixels} pixels") from None
    except Exception as e:
        raise ApiError("not_an_image",
                       f"cannot decode the {fmt} image ({e}); send a complete, uncorrupted PNG or JPEG") from None
    return im


def _canvas_png(data, head):
    """A browser canvas PNG decoded by service/png.py into an image sharing its buffer, or
    None for any other PNG (Pillow decodes those)."""
    try:
        pixels = png.canvas_pixels(data, head)
    except png.PNGError as e:
        raise ApiError("not_an_image",
                       f"cannot decode the PNG image ({e}); send a complete, uncorrupted PNG or JPEG") from None
    if pixels is None:
        return None
    size = (head.width, head.height)
    if pixels.ndim == 2:
        return Image.frombuffer("L", size, pixels, "raw", "L", 0, 1)
    # A fully opaque canvas (any browser's black on white) is RGB for our purposes: as
    # RGBX it skips the alpha handling. Read as little-endian uint32 the alpha byte is
    # the top one, so the smallest value tells, in one fast pass (Pillow would copy the
    # alpha channel out and then scan it).
    mode = "RGBX" if pixels.view("<u4").min() >= 0xFF000000 else "RGBA"
    return Image.frombuffer(mode, size, pixels, "raw", mode, 0, 1)


def to_mnist(im):
    """The model input for a decoded image: float32 [28, 28], ink 1.0. 422 if there is no ink."""
    x = ink.to_input(im)
    if x is None:
        raise ApiError("empty_canvas", "the canvas has no ink; draw a digit first")
    return x


def preprocess(data, limits):
    """Image bytes -> float32 [28, 28] model input. Raises ApiError 400/413/415/422."""
    return to_mnist(decode(data, limits))


def preview_data_url(x):
    """The 28x28 input as a PNG data URL, as the model saw it: white ink on black."""
    return "data:image/png;base64," + base64.b64encode(png.grey(contract.to_pixels(x))).decode()
