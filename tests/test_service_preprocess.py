"""Preprocessing on known shapes: the canvas -> MNIST recipe, and how odd images are handled."""
import io
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from service import png, preprocess
from service.errors import ApiError
from service_helpers import draw_digit, jpeg_bytes, png_bytes, png_from_rows

# Pillow warns about big images before our own check answers 413; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

MAX_PIXELS = 2048 * 2048
LIMITS = preprocess.Limits(MAX_PIXELS)  # per image only: nothing is charged to a request total


def prep(data):
    return preprocess.preprocess(data, LIMITS)


def centre_of_mass(x):
    ys, xs = np.mgrid[0:x.shape[0], 0:x.shape[1]]
    return (x * ys).sum() / x.sum(), (x * xs).sum() / x.sum()


def ink_box(x, threshold=0.1):
    rows = np.where((x > threshold).any(axis=1))[0]
    cols = np.where((x > threshold).any(axis=0))[0]
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def api_error(fn, *args):
    with pytest.raises(ApiError) as e:
        fn(*args)
    return e.value


def test_output_follows_the_model_contract():
    x = prep(png_bytes(draw_digit(7)))
    assert x.dtype == np.float32 and x.shape == (28, 28)
    assert x.min() == 0.0 and x.max() == pytest.approx(1.0, abs=0.02)
    assert max(ink_box(x, threshold=0)) == 20  # the longer side fills MNIST's 20 px box


@pytest.mark.parametrize("where", [(10, 10), (200, 30), (60, 190), (140, 140)])
def test_digit_is_centred_by_centre_of_mass_wherever_it_is_drawn(where):
    im = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    x0, y0 = where
    d.ellipse([x0, y0, x0 + 60, y0 + 70], outline=(0, 0, 0, 255), width=12)
    x = prep(png_bytes(im))
    cy, cx = centre_of_mass(x)
    assert abs(cy - 14) <= 0.6 and abs(cx - 14) <= 0.6
    # the same drawing anywhere on the canvas gives the same input
    ref = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    ImageDraw.Draw(ref).ellipse([100, 100, 160, 170], outline=(0, 0, 0, 255), width=12)
    assert np.abs(x - prep(png_bytes(ref))).max() < 0.05


def test_longer_side_is_scaled_to_20_px_keeping_aspect_ratio():
    im = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    ImageDraw.Draw(im).rectangle([40, 100, 240, 150], fill=(0, 0, 0, 255))  # 201 x 51
    h, w = ink_box(prep(png_bytes(im)))
    assert w == 20 and h in (5, 6)


def test_thin_vertical_one_is_not_stretched_into_a_block():
    x = prep(png_bytes(draw_digit(1)))
    h, w = ink_box(x)
    assert h == 20 and w <= 3
    assert (x > 0.5).sum() < 60  # a thin bar, not a 20x20 block
    cy, cx = centre_of_mass(x)
    assert abs(cx - 14) <= 0.6


def test_small_drawing_is_scaled_up_to_20_px():
    im = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    ImageDraw.Draw(im).ellipse([130, 130, 145, 148], outline=(0, 0, 0, 255), width=3)
    h, w = ink_box(prep(png_bytes(im)))
    assert h == 20


def test_transparent_and_white_backgrounds_give_identical_inputs():
    transparent = prep(png_bytes(draw_digit(7)))
    white = prep(png_bytes(draw_digit(7, background=(255, 255, 255, 255))))
    white_rgb = prep(png_bytes(draw_digit(7, background=(255, 255, 255, 255), mode="RGB")))
    # transparent with "garbage" colour under alpha=0, as some canvases store it
    garbage = prep(png_bytes(draw_digit(7, background=(90, 200, 30, 0))))
    np.testing.assert_array_equal(transparent, white)
    np.testing.assert_array_equal(transparent, white_rgb)
    np.testing.assert_array_equal(transparent, garbage)


def test_coloured_ink_gives_the_same_input_on_transparent_and_on_white():
    # Three ways to the ink: an opaque canvas is read as RGB, black ink on transparent is
    # its alpha, and any other ink on transparent is the inverted gray times alpha.
    blue = (0, 0, 255, 255)
    on_transparent = prep(png_bytes(draw_digit(7, ink=blue)))
    on_white = prep(png_bytes(draw_digit(7, ink=blue, background=(255, 255, 255, 255))))
    np.testing.assert_array_equal(on_transparent, on_white)
    assert on_white.max() > 0.5


def test_jpeg_matches_png_closely():
    png = prep(png_bytes(draw_digit(0)))
    jpeg = prep(jpeg_bytes(draw_digit(0), quality=85))
    assert np.abs(png - jpeg).mean() < 0.02


def test_grey_and_coloured_ink_count_as_ink():
    for ink in [(0, 0, 255, 255), (100, 100, 100, 255), (0, 0, 0, 160)]:
        x = prep(png_bytes(draw_digit(1, ink=ink)))
        assert ink_box(x)[0] == 20


@pytest.mark.parametrize("image", [
    Image.new("RGBA", (280, 280), (0, 0, 0, 0)),            # transparent canvas
    Image.new("RGBA", (280, 280), (255, 255, 255, 255)),    # white canvas
    Image.new("L", (50, 80), 250),                          # near-white, below the ink threshold
    Image.new("RGBA", (280, 280), (0, 0, 0, 10)),           # a whisper of alpha
], ids=["transparent", "white", "near-white", "faint-alpha"])
def test_empty_canvas_is_422(image):
    e = api_error(prep, png_bytes(image))
    assert (e.status, e.code) == (422, "empty_canvas")


def test_white_jpeg_is_empty():
    e = api_error(prep, jpeg_bytes(Image.new("RGB", (280, 280), (255, 255, 255)), quality=50))
    assert (e.status, e.code) == (422, "empty_canvas")


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "I;16"])
def test_png_modes_give_the_same_digit(mode):
    ref = prep(png_bytes(draw_digit(7, background=(255, 255, 255, 255))))
    im = draw_digit(7, background=(255, 255, 255, 255), mode="RGB")
    if mode == "I;16":
        im = Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257)  # 16-bit grayscale
        assert im.mode == "I;16"
    elif mode == "LA":
        im = draw_digit(7).convert(mode)
    else:
        im = im.convert(mode)
    x = prep(png_bytes(im))
    assert np.abs(x - ref).mean() < 0.03, mode


def test_grey_png_as_the_frontend_sends_gives_the_input_of_the_rgb_canvas():
    white = draw_digit(7, background=(255, 255, 255, 255), mode="RGB")
    grey = png_bytes(white.convert("L"))
    np.testing.assert_array_equal(np.asarray(preprocess.decode(grey, LIMITS)), np.asarray(white.convert("L")))
    np.testing.assert_array_equal(prep(grey), prep(png_bytes(white)))


@pytest.fixture
def libspng_calls(monkeypatch):
    """The number of PNGs libspng decoded, so far in this test."""
    calls = []
    real = png.pyspng.load

    def load(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(png.pyspng, "load", load)
    return calls


def test_frontend_grey_png_is_inflated_without_libspng(libspng_calls):
    # frontend/png.js writes every row with filter type 0 (none), as png.grey does.
    white = draw_digit(7, background=(255, 255, 255, 255), mode="RGB")
    pixels = np.asarray(white.convert("L"))
    data = png.grey(pixels, level=6)
    np.testing.assert_array_equal(np.asarray(preprocess.decode(data, LIMITS)), pixels)
    np.testing.assert_array_equal(prep(data), prep(png_bytes(white)))
    assert libspng_calls == []


def test_grey_png_with_a_filtered_row_is_decoded_by_libspng(libspng_calls):
    pixels = np.asarray(draw_digit(7, background=(255, 255, 255, 255), mode="L"))
    rows = np.zeros((pixels.shape[0], pixels.shape[1] + 1), np.uint8)
    rows[:, 1:] = pixels
    rows[100, 0], rows[100, 1:] = 2, pixels[100] - pixels[99]  # filter type 2 (up), modulo 256
    height, width = pixels.shape
    data = png_from_rows(rows.tobytes(), width, height)
    np.testing.assert_array_equal(np.asarray(preprocess.decode(data, LIMITS)), pixels)
    assert len(libspng_calls) == 1


@pytest.mark.parametrize("damage", ["a row short", "stream cut", "unknown filter type"])
def test_broken_unfiltered_grey_png_is_400(damage):
    rows = np.zeros((20, 31), np.uint8)
    rows[:, 1:] = 255
    raw = rows.tobytes()
    if damage == "a row short":
        data = png_from_rows(raw[:-31], 30, 20)
    elif damage == "stream cut":
        data = png_from_rows(raw, 30, 20)
        data = data.replace(zlib.compress(raw), zlib.compress(raw)[:-20])  # the CRC no longer matters
    else:
        rows[7, 0] = 7
        data = png_from_rows(rows.tobytes(), 30, 20)
    e = api_error(preprocess.decode, data, LIMITS)
    assert (e.status, e.code) == (400, "not_an_image")
    assert "send a complete, uncorrupted PNG" in e.message


def test_grey_png_with_a_transparent_grey_key_is_composited_onto_white():
    # Grey 128 is the background here, and the tRNS chunk makes it transparent: it is
    # paper, not a canvas covered in mid-grey ink.
    ink = draw_digit(7, background=(255, 255, 255, 255), mode="L")
    keyed = ink.point(lambda v: 128 if v == 255 else v)
    np.testing.assert_array_equal(prep(png_bytes(keyed, transparency=128)), prep(png_bytes(ink)))


def test_palette_png_with_transparent_index():
    im = draw_digit(1).convert("RGBA")
    p = Image.new("P", im.size, 0)
    p.putpalette([255, 0, 0, 0, 0, 0] + [0] * 762)  # index 0 red (but transparent), 1 black
    p.paste(1, mask=im.getchannel("A"))
    data = png_bytes(p, transparency=0)
    np.testing.assert_allclose(prep(data), prep(png_bytes(draw_digit(1).point(lambda v: 255 if v > 127 else 0))),
                               atol=0.05)


def test_cmyk_jpeg():
    im = draw_digit(0, background=(255, 255, 255, 255), mode="RGB").convert("CMYK")
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    x = prep(buf.getvalue())
    assert ink_box(x)[0] == 20


def test_animated_png_uses_the_first_frame():
    frames = [draw_digit(1), draw_digit(0)]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(prep(buf.getvalue()), prep(png_bytes(frames[0])))


def png_header_only(width, height):
    """A PNG that claims width x height (a decompression bomb's header) with a tiny IDAT."""
    return png_from_rows(b"\0" * 64, width, height)


@pytest.mark.parametrize("size", [(100_000, 100_000), (2049, 2048), (1, 5_000_000)])
def test_too_many_pixels_is_413_before_decoding(size, monkeypatch):
    decoded = []  # every decoder the image could reach records itself here
    for owner, name in ((png, "canvas_pixels"), (png.pyspng, "load"), (preprocess.Image, "open")):
        real = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, real=real, name=name, **k: decoded.append(name) or real(*a, **k))
    e = api_error(prep, png_header_only(*size))
    assert (e.status, e.code) == (413, "image_too_large")
    assert decoded == []  # answered from the header, nothing decoded


def test_real_decompression_bomb_is_413():
    # 3000 x 3000 of zeros compresses to a few KB but would decode to 9 MP.
    data = png_bytes(Image.new("L", (3000, 3000), 255), optimize=True)
    assert len(data) < 50_000
    e = api_error(prep, data)
    assert (e.status, e.code) == (413, "image_too_large")


def test_limit_is_configurable():
    e = api_error(preprocess.preprocess, png_bytes(draw_digit(7)), preprocess.Limits(100 * 100))
    assert e.status == 413 and "10000" in e.message


@pytest.mark.parametrize("data,status,code", [
    (b"", 400, "not_an_image"),
    (b"hello, not an image", 400, "not_an_image"),
    (b"GIF89a" + b"\0" * 20, 415, "unsupported_image_format"),
    (b"RIFF\0\0\0\0WEBPVP8 ", 415, "unsupported_image_format"),
    (b"BM" + b"\0" * 40, 415, "unsupported_image_format"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, 400, "not_an_image"),
    (b"\xff\xd8\xff\xe0" + b"\0" * 30, 400, "not_an_image"),
])
def test_bad_bytes(data, status, code):
    e = api_error(prep, data)
    assert (e.status, e.code) == (status, code)
    assert e.message


def test_truncated_png_is_400():
    data = png_bytes(draw_digit(7))
    for cut in (20, 40, len(data) // 2, len(data) - 30):
        e = api_error(prep, data[:cut])
        assert (e.status, e.code) == (400, "not_an_image"), cut


def test_preview_is_the_input_as_png():
    import base64

    x = prep(png_bytes(draw_digit(7)))
    url = preprocess.preview_data_url(x)
    assert url.startswith("data:image/png;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert im.size == (28, 28) and im.mode == "L"
    np.testing.assert_allclose(np.asarray(im) / 255.0, x, atol=1 / 255)
