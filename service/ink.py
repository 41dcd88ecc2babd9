"""A drawing's ink cut down to the model's input, by MNIST's own recipe: the step the
service and training share.

1. composite onto white (a transparent canvas and a white one give the same input);
2. grayscale and invert, so ink is bright;
3. crop to the ink's bounding box;
4. scale the longer side to 20 px, keeping the aspect ratio, with anti-aliasing
   (a thin "1" stays thin);
5. paste into a 28x28 frame so the centre of mass lands on the centre.

The service runs it on every decoded upload (service/preprocess.py); training runs it on
the pen strokes it renders as the page does (training/render.py), so both feed the model
the same input for the same drawing. It imports nothing but numpy, Pillow and the contract:
the training image copies this file (training/Dockerfile).
"""
import numpy as np
from PIL import Image, ImageChops

from . import contract

INK_THRESHOLD = 32   # of 255: fainter pixels (JPEG noise, a stray smudge) do not count as ink
BOX, FRAME = 20, contract.SIDE  # MNIST: digit fitted in a 20x20 box, centred in a 28x28 frame


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
    # Crop to the ink now (one cheap pass) so the threshold in to_input works on the
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


def to_input(im):
    """The model input for a decoded image: float32 [28, 28], ink 1.0; None if there is no ink."""
    ink = ink_image(im)
    # Subtracting (threshold - 1) zeroes the faint pixels, so getbbox finds real ink only
    # (Image.point would rebuild its 256-entry table in Python on every call).
    box = None if ink is None else ImageChops.subtract(ink, Image.new("L", ink.size, INK_THRESHOLD - 1)).getbbox()
    if box is None:
        return None
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
        return None
    cy = small.sum(axis=1) @ np.arange(h, dtype=np.float32) / total
    cx = small.sum(axis=0) @ np.arange(w, dtype=np.float32) / total
    # Centre of mass onto pixel (14, 14), as in MNIST; clamp so no ink falls off the frame.
    top = min(max(int(round(FRAME / 2 - cy)), 0), FRAME - h)
    left = min(max(int(round(FRAME / 2 - cx)), 0), FRAME - w)
    out = np.zeros((FRAME, FRAME), np.float32)
    out[top:top + h, left:left + w] = contract.scale(small)
    return out
