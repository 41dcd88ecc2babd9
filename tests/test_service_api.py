"""The whole HTTP API contract, run twice: through Flask's test client, and against a real
`python -m service` (Granian, the container's command) with 2 workers on 127.0.0.1. Every
response is checked against the served OpenAPI document. The model is the one trained in
this test run."""
import base64
import io
import json
import shutil

import numpy as np
import pytest
import requests
from PIL import Image

from service import preprocess
from service.app import CSP, create_app
from service_helpers import (FlaskClient, HttpClient, ServiceProcess, b64, data_url, draw_digit, jpeg_bytes,
                             latest_version, openapi_document, png_bytes, validate_against_openapi)

ALLOWED_ORIGIN = "https://digits.example.com"
# Small, so the over-limit requests stay small too.
MAX_BODY = 60_000


@pytest.fixture(scope="module")
def store(trained_store, tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "store"
    shutil.copytree(trained_store, path)
    return str(path)


@pytest.fixture(scope="module")
def frontend(tmp_path_factory):
    path = tmp_path_factory.mktemp("frontend")
    (path / "index.html").write_text("<!doctype html><title>t</title><script type=module src=app.js></script>")
    (path / "app.js").write_text("export const x = 1;\n")
    return str(path)


@pytest.fixture(scope="module", params=["flask", "granian"])
def api(request, store, frontend, tmp_path_factory):
    settings = {"MODEL_URI": store, "MODEL_POLL_SECONDS": 0, "CORS_ORIGINS": ALLOWED_ORIGIN,
                "FRONTEND_DIR": frontend, "MAX_BODY_BYTES": MAX_BODY}
    if request.param == "flask":
        app = create_app({**settings, "CORS_ORIGINS": [ALLOWED_ORIGIN]})
        assert app.model_holder.wait_ready(60)
        yield Api(FlaskClient(app), None)
    else:
        with ServiceProcess(str(tmp_path_factory.mktemp("server")), WEB_CONCURRENCY=2,
                            THREADS=2, **settings) as server:
            server.wait_ready()
            yield Api(HttpClient(server.url), server)


class Api:
    """Sends a request, checks the response against the OpenAPI document, returns it."""

    doc = openapi_document()

    def __init__(self, client, server):
        self.client, self.server = client, server

    def call(self, method, path, **kw):
        status, headers, body = self.client.open(method, path, **kw)
        validate_against_openapi(self.doc, path.split("?")[0], method, status, headers, body)
        assert headers.get("Content-Security-Policy") == CSP
        assert headers.get("X-Request-Id")
        return Response(status, headers, body)


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    @property
    def json(self):
        return json.loads(self.body)

    @property
    def error_code(self):
        return self.json["error"]["code"]


SEVEN = png_bytes(draw_digit(7))


def check_prediction(p, digit, version):
    assert p["digit"] == digit, p
    assert abs(sum(p["probabilities"]) - 1) < 1e-4
    assert p["confidence"] == max(p["probabilities"]) and p["probabilities"][digit] == p["confidence"]
    assert p["model_version"] == version


# ---- /predict: the three request forms -------------------------------------------------------

def test_predict_json_data_url_and_bare_base64(api, store):
    version = latest_version(store)
    a = api.call("POST", "/predict", json_body={"image": data_url(SEVEN)})
    b = api.call("POST", "/predict", json_body={"image": b64(SEVEN), "preview": False})
    assert a.status == b.status == 200
    check_prediction(a.json, 7, version)
    assert a.json == b.json and "preview" not in a.json


@pytest.mark.parametrize("digit", [0, 1, 7])
def test_predict_reads_clearly_drawn_digits(api, digit):
    r = api.call("POST", "/predict", json_body={"image": data_url(png_bytes(draw_digit(digit)))})
    assert r.status == 200 and r.json["digit"] == digit


def test_predict_multipart(api, store):
    r = api.call("POST", "/predict", files={"image": ("canvas.png", SEVEN)}, data={"preview": "true"})
    assert r.status == 200
    check_prediction(r.json, 7, latest_version(store))
    assert r.json["preview"].startswith("data:image/png;base64,")


def test_predict_raw_png_and_jpeg(api):
    png = api.call("POST", "/predict", data=SEVEN, headers={"Content-Type": "image/png"})
    jpeg = api.call("POST", "/predict?preview=true", data=jpeg_bytes(draw_digit(7)),
                    headers={"Content-Type": "image/jpeg"})
    assert png.status == jpeg.status == 200
    assert png.json["digit"] == jpeg.json["digit"] == 7
    assert "preview" in jpeg.json and "preview" not in png.json


def test_preview_is_the_28x28_input(api):
    r = api.call("POST", "/predict", json_body={"image": data_url(SEVEN), "preview": True})
    im = Image.open(io.BytesIO(base64.b64decode(r.json["preview"].split(",", 1)[1])))
    assert im.size == (28, 28)
    expected = preprocess.preprocess(SEVEN, preprocess.Limits(10**6))
    np.testing.assert_allclose(np.asarray(im) / 255, expected, atol=1 / 255)


def test_batch(api, store):
    images = [data_url(png_bytes(draw_digit(d))) for d in (0, 1, 7)]
    r = api.call("POST", "/predict", json_body={"images": images, "preview": True})
    assert r.status == 200
    version = latest_version(store)
    assert r.json["model_version"] == version
    for p, digit in zip(r.json["predictions"], (0, 1, 7)):
        check_prediction(p, digit, version)
        assert p["preview"].startswith("data:image/png;base64,")


def test_batch_of_64_is_accepted_and_65_is_413(api):
    small = png_bytes(draw_digit(1, size=56))
    assert api.call("POST", "/predict", json_body={"images": [b64(small)] * 64}).status == 200
    r = api.call("POST", "/predict", json_body={"images": [b64(small)] * 65})
    assert (r.status, r.error_code) == (413, "too_many_images")


# ---- /predict: every error path --------------------------------------------------------------

@pytest.mark.parametrize("body,status,code", [
    (b"{not json", 400, "invalid_json"),
    (b"\xff\xfe\x00", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"),
    (b"{}", 400, "missing_field"),
    (b'{"img": "x"}', 400, "missing_field"),
    (b'{"image": 7}', 400, "invalid_field"),
    (b'{"image": null}', 400, "invalid_field"),
    (b'{"image": "abc", "preview": "yes"}', 400, "invalid_field"),
    (b'{"images": []}', 400, "invalid_field"),
    (b'{"images": "abc"}', 400, "invalid_field"),
    (b'{"images": [1]}', 400, "invalid_field"),
    (b'{"image": "x", "images": ["x"]}', 400, "invalid_field"),
    (b'{"image": "not base64!"}', 400, "invalid_base64"),
    (b'{"image": "data:image/png;base64"}', 400, "invalid_base64"),
    (b'{"image": "data:image/png,rawtext"}', 400, "invalid_base64"),
    (b'{"image": "aGVsbG8gd29ybGQ="}', 400, "not_an_image"),
    (b'{"image": "data:image/gif;base64,R0lGODlhAQABAAAAACw="}', 415, "unsupported_image_format"),
    (b'{"image": "R0lGODlhAQABAAAAACw="}', 415, "unsupported_image_format"),
])
def test_predict_json_errors(api, body, status, code):
    r = api.call("POST", "/predict", data=body, headers={"Content-Type": "application/json"})
    assert (r.status, r.error_code) == (status, code), r.json
    assert len(r.json["error"]["message"]) > 10


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", "image/gif",
                                          "application/x-www-form-urlencoded", None])
def test_predict_unsupported_content_type_is_415(api, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    r = api.call("POST", "/predict", data=SEVEN, headers=headers)
    assert (r.status, r.error_code) == (415, "unsupported_media_type")
    assert "image/png" in r.json["error"]["message"]


def test_predict_raw_body_errors(api):
    gif = api.call("POST", "/predict", data=b"GIF89a" + b"\0" * 50, headers={"Content-Type": "image/png"})
    assert (gif.status, gif.error_code) == (415, "unsupported_image_format")
    junk = api.call("POST", "/predict", data=b"\x89PNG\r\n\x1a\ngarbage", headers={"Content-Type": "image/png"})
    assert (junk.status, junk.error_code) == (400, "not_an_image")
    empty = api.call("POST", "/predict", data=b"", headers={"Content-Type": "image/png"})
    assert (empty.status, empty.error_code) == (400, "not_an_image")


def test_predict_multipart_without_image_is_400(api):
    r = api.call("POST", "/predict", files={"picture": ("x.png", SEVEN)})
    assert (r.status, r.error_code) == (400, "missing_field")


def test_body_over_the_limit_is_413(api):
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_BODY + 10)
    r = api.call("POST", "/predict", data=big, headers={"Content-Type": "image/png"})
    assert (r.status, r.error_code) == (413, "body_too_large")
    r = api.call("POST", "/predict", json_body={"image": b64(big[:46_000])})  # 61 kB of JSON
    assert (r.status, r.error_code) == (413, "body_too_large")
    # Far over the limit: still a 413, not a connection reset mid-upload.
    r = api.call("POST", "/predict", data=big * 30, headers={"Content-Type": "image/png"})
    assert (r.status, r.error_code) == (413, "body_too_large")


def test_image_over_the_pixel_limit_is_413(api):
    bomb = png_bytes(Image.new("L", (3000, 3000), 255), optimize=True)
    r = api.call("POST", "/predict", data=bomb, headers={"Content-Type": "image/png"})
    assert (r.status, r.error_code) == (413, "image_too_large")


def test_empty_canvas_is_422(api):
    blank = png_bytes(Image.new("RGBA", (280, 280), (0, 0, 0, 0)))
    r = api.call("POST", "/predict", json_body={"image": data_url(blank)})
    assert (r.status, r.error_code) == (422, "empty_canvas")
    r = api.call("POST", "/predict", json_body={"images": [data_url(SEVEN), data_url(blank)]})
    assert (r.status, r.error_code) == (422, "empty_canvas")
    assert "images[1]" in r.json["error"]["message"]


@pytest.mark.parametrize("method,path", [("GET", "/predict"), ("PUT", "/predict"), ("POST", "/healthz"),
                                         ("DELETE", "/model"), ("POST", "/"), ("GET", "/v2/models/digitdraw/infer"),
                                         ("POST", "/app.js")])
def test_wrong_method_is_405(api, method, path):
    r = api.call(method, path)
    assert (r.status, r.error_code) == (405, "method_not_allowed")
    assert r.headers.get("Allow")


@pytest.mark.parametrize("path", ["/nope.js", "/v2/models/other", "/a/b/c", "/../service/app.py",
                                  "/%2e%2e/service/app.py"])
def test_unknown_path_is_404_json(api, path):
    r = api.call("GET", path)
    assert (r.status, r.error_code) == (404, "not_found")


# ---- health, model, metrics, openapi -------------------------------------------------------

def test_health_and_readiness(api, store):
    assert api.call("GET", "/healthz").json == {"status": "alive"}
    assert api.call("GET", "/readyz").json == {"status": "ready", "model_version": latest_version(store),
                                               "mode": "following", "feedback": False}


def test_model_is_the_public_part_of_the_published_model_json(api, store):
    version = latest_version(store)
    with open(f"{store}/models/{version}/model.json") as f:
        published = json.load(f)
    public = {k: published[k] for k in ("version", "created_at", "sha256", "size_bytes", "input", "output",
                                        "metrics", "data_source")}
    assert api.call("GET", "/model").json == {**public, "quantization": published["quantization"]["scheme"],
                                              "mode": "following"}
    assert "config" in published and "code_revision" in published  # kept for the registry, not told to clients


def test_metrics(api, store):
    from prometheus_client.parser import text_string_to_metric_families

    version = latest_version(store)
    for _ in range(3):
        assert api.call("POST", "/predict", json_body={"image": data_url(SEVEN)}).status == 200
    api.call("POST", "/predict", data=b"{", headers={"Content-Type": "application/json"})
    r = api.call("GET", "/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = r.body.decode()
    counts = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    v = f'model_version="{version}"'
    assert counts[f'digitdraw_requests_total{{route="/predict",status="200",{v}}}'] >= 3
    assert counts[f'digitdraw_requests_total{{route="/predict",status="400",{v}}}'] >= 1
    assert counts[f'digitdraw_request_duration_seconds_count{{route="/predict",{v}}}'] >= 4
    assert counts[f'digitdraw_request_duration_seconds_bucket{{route="/predict",{v},le="+Inf"}}'] >= 4
    assert counts[f"digitdraw_inference_duration_seconds_count{{{v}}}"] >= 3
    assert counts[f"digitdraw_predictions_total{{{v}}}"] >= 3
    assert counts[f"digitdraw_prediction_confidence_count{{{v}}}"] >= 3
    assert any(k.startswith(f'digitdraw_model_info{{version="{version}"') for k in counts)
    # The whole text is valid exposition format: Prometheus's own parser reads every family, and
    # every histogram's buckets only grow and end at its count.
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"digitdraw_requests", "digitdraw_request_duration_seconds", "digitdraw_prediction_confidence"} <= set(families)
    for family in families.values():
        if family.type == "histogram":
            series = {}
            for s in family.samples:
                key = tuple(sorted((k, x) for k, x in s.labels.items() if k != "le"))
                series.setdefault(key, {})[s.name.rsplit("_", 1)[-1] + s.labels.get("le", "")] = s.value
            for key, values in series.items():
                buckets = [values[k] for k in values if k.startswith("bucket")]
                assert buckets == sorted(buckets) and values["bucket+Inf"] == values["count"], (family.name, key)


def test_metrics_add_up_across_workers(api):
    """Whichever worker answers the scrape reports the whole server's counts."""
    if api.server is None:
        pytest.skip("one process under the test client")
    before = metric(requests.get(api.server.url + "/metrics").text, 'route="/v2/health/live",status="200"')
    for _ in range(20):  # new connections, so the workers share them
        assert requests.get(api.server.url + "/v2/health/live", headers={"Connection": "close"}).status_code == 200
    seen = {metric(requests.get(api.server.url + "/metrics", headers={"Connection": "close"}).text,
                   'route="/v2/health/live",status="200"') for _ in range(6)}
    assert seen == {before + 20}


def metric(text, labels):
    for line in text.splitlines():
        if line.startswith("digitdraw_requests_total{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_openapi_document_is_served(api):
    r = api.call("GET", "/openapi.json")
    assert r.json == json.loads(json.dumps(openapi_document()))


# ---- Open Inference Protocol v2 ------------------------------------------------------------

def infer_body(x, name="image", **extra):
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            **extra}


def test_oip_health_and_metadata(api, store):
    assert api.call("GET", "/v2/health/live").json == {"live": True}
    assert api.call("GET", "/v2/health/ready").json == {"ready": True}
    assert api.call("GET", "/v2/models/digitdraw/ready").json == {"name": "digitdraw", "ready": True}
    assert api.call("GET", "/v2").json["name"] == "digitdraw"
    meta = api.call("GET", "/v2/models/digitdraw").json
    assert meta["versions"] == [latest_version(store)]
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]


def test_oip_infer_agrees_with_predict(api):
    x = np.stack([preprocess.preprocess(png_bytes(draw_digit(d)), preprocess.Limits(10**6)) for d in (0, 1, 7)])[:, None]
    r = api.call("POST", "/v2/models/digitdraw/infer", json_body=infer_body(x, id="req-1"))
    assert r.status == 200 and r.json["id"] == "req-1"
    outputs = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in r.json["outputs"]}
    assert outputs["logits"].shape == outputs["probabilities"].shape == (3, 10)
    assert list(outputs["logits"].argmax(axis=1)) == [0, 1, 7]
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1, atol=1e-5)
    predicted = api.call("POST", "/predict", json_body={"image": data_url(SEVEN)}).json["probabilities"]
    np.testing.assert_allclose(outputs["probabilities"][2], predicted, atol=1e-5)


def test_oip_infer_nested_data_and_output_selection(api):
    x = np.zeros((1, 1, 28, 28), np.float32)
    body = infer_body(x, outputs=[{"name": "probabilities"}])
    body["inputs"][0]["data"] = x.tolist()  # nested, as some clients send it
    r = api.call("POST", "/v2/models/digitdraw/infer", json_body=body)
    assert r.status == 200 and [o["name"] for o in r.json["outputs"]] == ["probabilities"]


@pytest.mark.parametrize("mutate,status,code", [
    (lambda b: b["inputs"][0].update(name="input"), 400, "invalid_tensor"),
    (lambda b: b["inputs"][0].update(datatype="FP64"), 400, "invalid_tensor"),
    (lambda b: b["inputs"][0].update(shape=[1, 28, 28]), 400, "invalid_tensor"),
    (lambda b: b["inputs"][0].update(shape=[0, 1, 28, 28]), 400, "invalid_tensor"),
    (lambda b: b["inputs"][0].update(data=[0.0] * 10), 400, "invalid_tensor"),
    (lambda b: b["inputs"][0].update(data=["a"] * 784), 400, "invalid_tensor"),
    (lambda b: b["inputs"][0].update(data=["0.5"] * 784), 400, "invalid_tensor"),
    (lambda b: b["inputs"][0].update(data=[True] * 784), 400, "invalid_tensor"),
    (lambda b: b["inputs"][0].update(data=[10 ** 400] + [0] * 783), 400, "invalid_tensor"),
    (lambda b: b["inputs"][0].update(data=[float("nan")] * 784), 400, "invalid_tensor"),
    (lambda b: b.update(inputs=[]), 400, "invalid_tensor"),
    (lambda b: b.update(inputs={"name": "image"}), 400, "invalid_tensor"),
    (lambda b: b.update(outputs=[{"name": "softmax"}]), 400, "invalid_tensor"),
    (lambda b: b.update(outputs=[{"name": "logits"}] * 2), 400, "invalid_tensor"),  # each output once
    (lambda b: b.update(outputs=[{"name": "logits"}, {"name": ["logits"]}]), 400, "invalid_tensor"),
    (lambda b: b.update(outputs=[{"name": "logits", "parameters": {"binary_data": "yes"}}]), 400, "invalid_tensor"),
    (lambda b: b.update(parameters={"binary_data_output": 1}), 400, "invalid_tensor"),
    (lambda b: b["inputs"][0].update(parameters={"binary_data_size": 3136}), 400, "invalid_tensor"),  # and data
    (lambda b: b["inputs"][0].update(shape=[65, 1, 28, 28]), 413, "too_many_images"),  # checked before the data
])
def test_oip_infer_errors(api, mutate, status, code):
    body = infer_body(np.zeros((1, 1, 28, 28), np.float32))
    mutate(body)
    r = api.call("POST", "/v2/models/digitdraw/infer", data=json.dumps(body),
                 headers={"Content-Type": "application/json"})
    assert (r.status, r.error_code) == (status, code)


def test_oip_infer_wrong_content_type(api):
    body = json.dumps(infer_body(np.zeros((1, 1, 28, 28), np.float32))).encode()
    r = api.call("POST", "/v2/models/digitdraw/infer", data=body, headers={"Content-Type": "image/png"})
    assert (r.status, r.error_code) == (415, "unsupported_media_type")
    r = api.call("POST", "/v2/models/digitdraw/infer", data=body,
                 headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert (r.status, r.error_code) == (415, "unsupported_media_type")
    r = api.call("POST", "/v2/models/digitdraw/infer", data=b"{", headers={"Content-Type": "application/json"})
    assert (r.status, r.error_code) == (400, "invalid_json")


def binary_request(x, header_length=None, size=None, tail=None):
    """A binary tensor data request by hand, for what no client library would send."""
    head = json.dumps({"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes if size is None else size}}]}).encode()
    data = x.astype("<f4").tobytes() if tail is None else tail
    return head + data, {"Content-Type": "application/octet-stream",
                         "Inference-Header-Content-Length": str(len(head)) if header_length is None else header_length}


@pytest.mark.parametrize("case,code", [
    (dict(header_length="0"), "invalid_header"),
    (dict(header_length="-5"), "invalid_header"),
    (dict(header_length="99999999"), "invalid_header"),
    (dict(header_length="12"), "invalid_json"),  # the length cuts the JSON short
    (dict(size=3135), "invalid_tensor"),  # not the shape's bytes
    (dict(size=True), "invalid_tensor"),
    (dict(tail=b"\0" * 3135), "invalid_tensor"),  # fewer bytes than announced
    (dict(tail=b"\0" * 3137), "invalid_tensor"),  # more
    (dict(tail=np.full(784, np.nan, "<f4").tobytes()), "invalid_tensor"),
])
def test_oip_binary_request_errors(api, case, code):
    data, headers = binary_request(np.zeros((1, 1, 28, 28), np.float32), **case)
    r = api.call("POST", "/v2/models/digitdraw/infer", data=data, headers=headers)
    assert (r.status, r.error_code) == (400, code)


def test_oip_binary_data_after_a_json_only_request_is_refused(api):
    data, _ = binary_request(np.zeros((1, 1, 28, 28), np.float32))
    r = api.call("POST", "/v2/models/digitdraw/infer", data=data, headers={"Content-Type": "application/json"})
    assert (r.status, r.error_code) == (400, "invalid_json")


def test_oip_reply_is_bounded_by_the_work(api):
    """However often an output is asked for, the reply holds each output once at most: a
    request may not multiply its reply (5,000 repeats once built a 62 MB reply)."""
    x = np.zeros((2, 1, 28, 28), np.float32)
    r = api.call("POST", "/v2/models/digitdraw/infer", json_body=infer_body(x, outputs=[{"name": "logits"}] * 1000))
    assert (r.status, r.error_code) == (400, "invalid_tensor") and len(r.body) < 300
    r = api.call("POST", "/v2/models/digitdraw/infer", json_body=infer_body(x))
    assert r.status == 200 and [o["name"] for o in r.json["outputs"]] == ["logits", "probabilities"]


# ---- frontend, CSP, CORS, request ids ------------------------------------------------------

def test_frontend_is_served_with_a_strict_csp(api):
    r = api.call("GET", "/")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
    assert b"<script type=module" in r.body
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    js = api.call("GET", "/app.js")
    assert js.status == 200 and "javascript" in js.headers["Content-Type"]
    assert js.headers["X-Content-Type-Options"] == "nosniff"


def test_cors_allow_list(api):
    allowed = api.call("POST", "/predict", json_body={"image": data_url(SEVEN)}, headers={"Origin": ALLOWED_ORIGIN})
    assert allowed.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert "Origin" in allowed.headers["Vary"]
    other = api.call("POST", "/predict", json_body={"image": data_url(SEVEN)},
                     headers={"Origin": "https://evil.example"})
    assert other.status == 200 and "Access-Control-Allow-Origin" not in other.headers
    status, headers, _ = api.client.open("OPTIONS", "/predict", headers={
        "Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert status in (200, 204) and headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "content-type" in headers["Access-Control-Allow-Headers"].lower()
    status, headers, _ = api.client.open("OPTIONS", "/predict", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in headers


def test_request_id_is_honoured_or_generated(api):
    mine = api.call("GET", "/healthz", headers={"X-Request-Id": "trace-abc.123"})
    assert mine.headers["X-Request-Id"] == "trace-abc.123"
    bad = api.call("GET", "/healthz", headers={"X-Request-Id": "no spaces or \"quotes\" allowed"})
    assert bad.headers["X-Request-Id"] != "no spaces or \"quotes\" allowed"
    a, b = api.call("GET", "/healthz"), api.call("GET", "/healthz")
    assert a.headers["X-Request-Id"] != b.headers["X-Request-Id"]


def test_one_json_log_line_per_request(api, store):
    if api.server is None:
        pytest.skip("the log file belongs to the real server")
    api.call("POST", "/predict", json_body={"image": data_url(SEVEN)}, headers={"X-Request-Id": "log-check-1"})
    api.call("GET", "/nope.js", headers={"X-Request-Id": "log-check-2"})
    lines = api.server.wait_log(lambda e: e.get("request_id") == "log-check-2")
    ok = [e for e in api.server.logs() if e.get("request_id") == "log-check-1"]
    assert len(ok) == 1
    entry = ok[0]
    assert entry["method"] == "POST" and entry["path"] == "/predict" and entry["status"] == 200
    assert entry["model_version"] == latest_version(store) and entry["latency_ms"] > 0
    assert lines[0]["status"] == 404
