"""Property tests: whatever is thrown at /predict, /feedback and OIP /infer (random or
truncated bytes, odd image modes, animations, giant dimensions, malformed, deeply nested
JSON, huge numbers) gets a JSON answer and never a 5xx: a 4xx error, or a prediction or a
stored correction when the input really is a drawable image."""
import io
import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from service import png
from service.app import create_app
from service_helpers import b64, draw_digit, jpeg_bytes, png_bytes, png_from_rows

# Pillow warns about big images before our own check answers 413; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

MAX_PIXELS = 1000 * 1000
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PNG = png_bytes(draw_digit(7))
JPEG = jpeg_bytes(draw_digit(7))
# What the frontend sends: grey, every row unfiltered (decoded by its own path).
GREY = png.grey(np.asarray(draw_digit(7, background=(255, 255, 255, 255), mode="L")), level=6)


@pytest.fixture(scope="module")
def client(trained_store, tmp_path_factory):
    app = create_app({"MODEL_URI": trained_store, "MODEL_POLL_SECONDS": 0, "MAX_IMAGE_PIXELS": MAX_PIXELS,
                      "LOG_LEVEL": "WARNING", "FEEDBACK_URI": str(tmp_path_factory.mktemp("feedback")),
                      "FEEDBACK_RATE_LIMIT": 0})
    assert app.model_holder.wait_ready(60)
    return app.test_client()


def check(response, allow_ok=False):
    """A JSON error with a 4xx status, or (when allowed) a well-formed prediction."""
    from service.errors import CODES as ERROR_CODES

    assert response.status_code != 500, response.get_data()[:300]
    assert response.mimetype == "application/json"
    body = json.loads(response.get_data())
    if response.status_code == 200 and allow_ok:
        assert 0 <= body["digit"] <= 9 and len(body["probabilities"]) == 10
        return body
    assert 400 <= response.status_code < 500, (response.status_code, body)
    assert set(body) == {"error"} and body["error"]["code"] in ERROR_CODES and body["error"]["message"]
    return body


def post_raw(client, data, content_type="image/png"):
    return client.post("/predict", data=data, content_type=content_type)


@FUZZ
@given(data=st.binary(max_size=3000), content_type=st.sampled_from(["image/png", "image/jpeg"]))
def test_random_bytes(client, data, content_type):
    check(post_raw(client, data, content_type))
    check(client.post("/predict", json={"image": b64(data)}))
    check(client.post("/predict", data={"image": (io.BytesIO(data), "x.png")}))


@FUZZ
@given(base=st.sampled_from([PNG, GREY, JPEG]), data=st.data())
def test_truncated_images(client, base, data):
    cut = data.draw(st.integers(0, len(base) - 1))
    check(post_raw(client, base[:cut]), allow_ok=True)


@FUZZ
@given(base=st.sampled_from([PNG, GREY, JPEG]), data=st.data())
def test_corrupted_images(client, base, data):
    damaged = bytearray(base)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(damaged) - 1))
        damaged[i] = data.draw(st.integers(0, 255))
    check(post_raw(client, bytes(damaged)), allow_ok=True)


@st.composite
def odd_images(draw):
    """Random drawings in every mode Pillow can write as PNG or JPEG, some animated."""
    fmt, mode = draw(st.sampled_from([("PNG", "1"), ("PNG", "L"), ("PNG", "LA"), ("PNG", "P"), ("PNG", "RGB"),
                                      ("PNG", "RGBA"), ("PNG", "I;16"), ("PNG", "RGB;16"), ("PNG", "RGBA;16"), ("JPEG", "L"),
                                      ("JPEG", "RGB"), ("JPEG", "CMYK"), ("PNG", "P-transparent"),
                                      ("PNG", "animated"), ("GIF", "animated")]))
    w, h = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    im = Image.new("RGBA", (w, h), draw(st.sampled_from([(0, 0, 0, 0), (255, 255, 255, 255), (30, 90, 200, 128)])))
    d = ImageDraw.Draw(im)
    for _ in range(draw(st.integers(0, 4))):
        xy = [draw(st.integers(-20, w + 20)) for _ in range(4)]
        d.line(xy, fill=tuple(draw(st.integers(0, 255)) for _ in range(4)), width=draw(st.integers(1, 30)))
    buf = io.BytesIO()
    if mode == "animated":
        frames = [im, Image.new("RGBA", (w, h), (0, 0, 0, 255))]
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:])
    elif mode == "P-transparent":
        im.convert("P").save(buf, fmt, transparency=0)
    elif mode == "I;16":
        Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257).save(buf, fmt)
    elif mode.endswith(";16"):  # Pillow cannot write 16-bit colour PNGs: write one by hand
        return fmt, png16(np.asarray(im.convert(mode[:-3]), dtype=np.uint16) * 257)
    else:
        im.convert(mode).save(buf, fmt)
    return fmt, buf.getvalue()


@FUZZ
@given(image=odd_images())
def test_odd_modes_and_animations(client, image):
    fmt, data = image
    r = post_raw(client, data, "image/jpeg" if fmt == "JPEG" else "image/png")
    body = check(r, allow_ok=fmt != "GIF")
    if fmt == "GIF":
        assert body["error"]["code"] == "unsupported_image_format"
    elif r.status_code != 200:
        assert body["error"]["code"] == "empty_canvas"  # a valid image either has ink or not


def png16(pixels):
    """A 16-bit RGB or RGBA PNG of ``pixels`` (uint16 [h, w, 3 or 4])."""
    h, w, channels = pixels.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    return png_from_rows(rows, w, h, 16, 2 if channels == 3 else 6)


def png_header(width, height, bit_depth=8, color_type=0):
    return png_from_rows(b"\0" * 64, width, height, bit_depth, color_type)


def jpeg_header(width, height):
    """SOI + a baseline SOF0 claiming width x height, and nothing else."""
    sof = struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0])
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


@FUZZ
@given(width=st.integers(1, 2**31 - 1), height=st.integers(1, 2**31 - 1),
       kind=st.sampled_from([(8, 0), (8, 6), (16, 2), (1, 0), (8, 3)]))
def test_giant_png_dimensions(client, width, height, kind):
    body = check(post_raw(client, png_header(width, height, *kind)), allow_ok=True)
    if width * height > MAX_PIXELS:
        assert body["error"]["code"] == "image_too_large"


@FUZZ
@given(width=st.integers(1, 65535), height=st.integers(1, 65535))
def test_giant_jpeg_dimensions(client, width, height):
    body = check(post_raw(client, jpeg_header(width, height), "image/jpeg"))
    if width * height > MAX_PIXELS:
        assert body["error"]["code"] == "image_too_large"


@FUZZ
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_malformed_json(client, text):
    check(client.post("/predict", data=text.encode("utf-8", "surrogatepass"), content_type="application/json"))


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=12)


@FUZZ
@given(value=JSON_VALUES, key=st.sampled_from(["image", "images", "preview", "x"]))
def test_wrong_json_shapes(client, value, key):
    check(client.post("/predict", json={key: value}))
    check(client.post("/predict", json={"image": b64(PNG), "preview": value}), allow_ok=isinstance(value, bool))
    check(client.post("/predict", json=value), allow_ok=False)


@FUZZ
@given(value=JSON_VALUES)
def test_oip_infer_random_json(client, value):
    check(client.post("/v2/models/digitdraw/infer", json={"inputs": value}))
    check(client.post("/v2/models/digitdraw/infer", json={"inputs": [{"name": "image", "datatype": "FP32",
                                                                      "shape": [1, 1, 28, 28], "data": value}]}))


NESTED = st.tuples(st.integers(1, 4000), st.sampled_from(["[", '{"a": '])).map(
    lambda d: d[1] * d[0] + "1" + ("]" if d[1] == "[" else "}") * d[0])


@FUZZ
@given(nested=NESTED, where=st.sampled_from(["body", "field"]))
def test_deeply_nested_json(client, nested, where):
    for path, body in (("/predict", '{"image": %s}'), ("/feedback", '{"image": "x", "label": %s}'),
                       ("/v2/models/digitdraw/infer", '{"inputs": [{"name": "image", "datatype": "FP32", '
                                                      '"shape": [1, 1, 28, 28], "data": %s}]}')):
        data = nested if where == "body" else body % nested
        check(client.post(path, data=data, content_type="application/json"))


HUGE = st.one_of(st.integers(min_value=-10 ** 600, max_value=10 ** 600), st.floats(allow_nan=True, allow_infinity=True),
                 st.sampled_from(["1e400", "-1e400", "1" * 500, "1e-400", "NaN", "Infinity"]))


@FUZZ
@given(number=HUGE, at=st.integers(0, 783))
def test_huge_numbers_in_oip_data(client, number, at):
    data = ["0"] * 784
    data[at] = number if isinstance(number, str) else json.dumps(number)
    body = ('{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [%s]}]}'
            % ",".join(data))
    r = client.post("/v2/models/digitdraw/infer", data=body, content_type="application/json")
    if r.status_code != 200:
        check(r)


FEEDBACK_VALUES = st.one_of(JSON_VALUES, st.integers(-5, 15), st.just(None), st.booleans(),
                            st.text(max_size=80), st.lists(st.lists(st.lists(st.floats(-1, 2), max_size=3),
                                                                    max_size=4), max_size=4))


@FUZZ
@given(body=st.fixed_dictionaries({}, optional={
    "image": st.one_of(st.just("data:image/png;base64," + b64(PNG)), st.just(b64(GREY)), FEEDBACK_VALUES),
    "label": FEEDBACK_VALUES, "predicted": FEEDBACK_VALUES, "model_version": FEEDBACK_VALUES,
    "client_id": FEEDBACK_VALUES, "strokes": FEEDBACK_VALUES, "other": FEEDBACK_VALUES}))
def test_random_feedback(client, body):
    r = client.post("/feedback", json=body)
    assert r.status_code != 500 and r.status_code < 500, r.get_data()[:300]
    if r.status_code in (200, 201):
        assert json.loads(r.get_data())["status"] in ("stored", "duplicate")
    else:
        check(r)


def oip_names(client):
    return [o["name"] for o in json.loads(client.get("/v2/models/digitdraw").get_data())["outputs"]]


DIGIT = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)


@FUZZ
@given(picks=st.lists(st.tuples(st.integers(0, 2), st.sampled_from([None, True, False])), max_size=6),
       every_binary=st.sampled_from([None, True, False]), unknown=st.text(max_size=20))
def test_oip_outputs_each_named_once(client, picks, every_binary, unknown):
    """Outputs picked at random, repeats and unknown names among them: a duplicate or an
    unknown name is a 400; otherwise each output asked for comes back exactly once."""
    names = oip_names(client) + [unknown]
    outputs = [{"name": names[i], **({} if b is None else {"parameters": {"binary_data": b}})} for i, b in picks]
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28],
                        "data": np.zeros(784).tolist()}]}
    if outputs:
        body["outputs"] = outputs
    if every_binary is not None:
        body["parameters"] = {"binary_data_output": every_binary}
    r = client.post("/v2/models/digitdraw/infer", json=body)
    asked = [o["name"] for o in outputs]
    if len(set(asked)) < len(asked) or unknown in asked and unknown not in names[:2]:
        assert r.status_code == 400 and check(r)["error"]["code"] == "invalid_tensor"
        return
    assert r.status_code == 200, r.get_data()[:300]
    data = r.get_data()
    head = data[:int(r.headers["Inference-Header-Content-Length"])] if "Inference-Header-Content-Length" in r.headers \
        else data
    got = [o["name"] for o in json.loads(head)["outputs"]]
    assert got == (asked if outputs else names[:2])
    assert len(data) < 4096  # bounded by the work asked for: two outputs of one image


@FUZZ
@given(header=st.one_of(st.integers(-5, 400), st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=12),
                        st.none()),
       size=st.one_of(st.just(3136), st.integers(-5, 4000), st.text(max_size=6), st.none()),
       tail=st.one_of(st.just(DIGIT.tobytes()), st.binary(max_size=4000)),
       datatype=st.sampled_from(["FP32", "FP64", "BYTES", "INT8"]))
def test_oip_binary_extension_framing(client, header, size, tail, datatype):
    """The binary tensor extension framed every way a client or an attacker could: a JSON
    length that is wrong, negative or not a number, a binary_data_size that disagrees with
    the shape or the bytes, other datatypes. Only a consistent request gets a 200."""
    parameters = {} if size is None else {"binary_data_size": size}
    head = json.dumps({"inputs": [{"name": "image", "datatype": datatype, "shape": [1, 1, 28, 28],
                                   "parameters": parameters}]}).encode()
    headers = {} if header is None else {"Inference-Header-Content-Length": str(len(head) if header == 0 else header)}
    r = client.post("/v2/models/digitdraw/infer", data=head + tail, headers=headers,
                    content_type="application/octet-stream")
    consistent = header == 0 and size == 3136 and len(tail) == 3136 and datatype == "FP32"
    if consistent:
        assert r.status_code == 200, r.get_data()[:300]
        assert json.loads(r.get_data())["outputs"][0]["shape"] == [1, 10]
    else:
        assert r.status_code != 200
        check(r)


@st.composite
def non_drawings(draw):
    """What the issue found stored as corrections, and its kin: dots, filled blocks, noise."""
    kind = draw(st.sampled_from(["dot", "block", "noise"]))
    seed = draw(st.integers(0, 2**32 - 1))
    canvas = np.full((280, 280), 255, np.uint8)
    if kind == "dot":
        side = draw(st.integers(1, 4))
        y, x = draw(st.integers(0, 280 - side)), draw(st.integers(0, 280 - side))
        canvas[y:y + side, x:x + side] = 0
        return canvas
    if kind == "block":
        h = draw(st.integers(40, 200))  # near square: a long thin block is a stroke (a 1)
        w = draw(st.integers(h * 9 // 10, h))
        canvas[20:20 + h, 30:30 + w] = 0
        return canvas
    side = draw(st.integers(32, 96))
    return np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)


@FUZZ
@given(pixels=non_drawings())
def test_non_drawings_are_never_stored(client, pixels):
    r = client.post("/feedback", json={"image": b64(png.grey(pixels, level=6)), "label": 1})
    assert r.status_code == 422, r.get_data()[:300]
    assert check(r)["error"]["code"] == "not_a_drawing"


@pytest.fixture(scope="module")
def server(trained_store, tmp_path_factory):
    from service_helpers import ServiceProcess

    with ServiceProcess(str(tmp_path_factory.mktemp("server")), MODEL_URI=trained_store) as s:
        s.wait_alive()
        yield s


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(cut=st.lists(st.booleans(), min_size=2, max_size=2), upper=st.lists(st.booleans(), min_size=12, max_size=12),
       value=st.text("abcdef0123456789", min_size=8, max_size=32))
def test_header_names_with_underscores_are_dropped(server, cut, upper, value):
    """A header spelt with underscores (X_Request_Id) is not the header spelt with dashes:
    the real server ignores it, as nginx does, so it cannot stand in for one a proxy set."""
    name = "".join(c.upper() if u else c for c, u in zip("x-request-id", upper))
    first, second = name.split("-")[0], name.split("-")[1]
    underscored = f"{first}{'_' if cut[0] else '-'}{second}{'_' if cut[1] else '-'}{name.split('-')[2]}"
    import requests

    got = requests.get(server.url + "/healthz", headers={underscored: value}, timeout=5).headers["X-Request-Id"]
    if "_" in underscored:
        assert got != value
    else:
        assert got == value
