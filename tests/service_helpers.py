"""Helpers for the service tests: drawn canvases, a real `python -m service` process,
publishing versions with the real store primitives, and checking responses against
the served OpenAPI document."""
import base64
import io
import json
import os
import subprocess
import sys
import time

import requests
from PIL import Image, ImageDraw

from conftest import ROOT, free_port, wait_http
from service import ops, png
from service import store as model_store

CANVAS = 280
STROKE = 18  # about what the frontend's pen gives on a 280 px canvas


def draw_digit(digit, size=CANVAS, background=(0, 0, 0, 0), ink=(0, 0, 0, 255), mode="RGBA", stroke=STROKE):
    """A clearly drawn 0, 1 or 7 on a canvas, like the frontend sends: black strokes on
    transparent (or any background colour)."""
    im = Image.new("RGBA", (size, size), background)
    d = ImageDraw.Draw(im)
    s = size / CANVAS
    if digit == 0:
        d.ellipse([95 * s, 50 * s, 185 * s, 230 * s], outline=ink, width=round(stroke * s))
    elif digit == 1:
        d.line([(140 * s, 45 * s), (140 * s, 235 * s)], fill=ink, width=round(stroke * s))
    elif digit == 7:
        d.line([(80 * s, 60 * s), (200 * s, 60 * s), (120 * s, 235 * s)], fill=ink, width=round(stroke * s),
               joint="curve")
    else:
        raise ValueError(f"no drawing for {digit}")
    return im if mode == "RGBA" else im.convert(mode)


def png_bytes(im, **save_args):
    buf = io.BytesIO()
    im.save(buf, "PNG", **save_args)
    return buf.getvalue()


def png_from_rows(rows, width, height, bit_depth=8, colour_type=0):
    """A PNG framed around ``rows`` (the raw scanlines, filter bytes included, as given):
    whatever the header claims, so tests can build PNGs no encoder would write."""
    return png.frame(rows, width, height, bit_depth, colour_type, level=-1)


def openapi_document():
    """The OpenAPI document the service serves at /openapi.json."""
    with open(ops.OPENAPI) as f:
        return json.load(f)


def jpeg_bytes(im, quality=90):
    buf = io.BytesIO()
    flat = Image.new("RGB", im.size, (255, 255, 255))
    flat.paste(im, mask=im.getchannel("A") if im.mode == "RGBA" else None)
    flat.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def b64(data):
    return base64.b64encode(data).decode()


def data_url(data, mime="image/png"):
    return f"data:{mime};base64,{b64(data)}"


def publish_copy(store_uri, new_version, corrupt=False, move=True):
    """Publish the store's LATEST model again as ``new_version`` and move LATEST to it
    (unless not ``move``), with the real store primitives. ``corrupt`` flips a byte of
    model.onnx after the sha256 in model.json was computed, as a damaged upload would."""
    store = model_store.open_store(store_uri)
    pointer, token = store.read_latest()
    onnx_bytes, meta = model_store.load_verified(store, pointer["version"])
    meta = {**meta, "version": new_version}
    if corrupt:
        onnx_bytes = onnx_bytes[:-100] + bytes([onnx_bytes[-100] ^ 0xFF]) + onnx_bytes[-99:]
    store.create(f"models/{new_version}/model.onnx", onnx_bytes)
    store.create(f"models/{new_version}/model.json", json.dumps(meta).encode())
    if move:
        store.swap_latest({"version": new_version}, token)
    return meta


def latest_version(store_uri):
    pointer, _ = model_store.open_store(store_uri).read_latest()
    return pointer["version"]


class ServiceProcess:
    """A real `python -m service` (the container's command) on 127.0.0.1, with its logs in a file.

    It starts at once unless ``start=False``; after ``stop()``, ``start()`` runs it again on
    the same port, appending to the same log. ``env`` overrides the environment.
    """

    def __init__(self, tmp_path, port=None, start=True, **env):
        self.command = [sys.executable, "-m", "service"]
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(tmp_path, f"service-{self.port}.log")
        self.env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), "MODEL_POLL_SECONDS": "0",
                    "LOG_LEVEL": "info", **{k: str(v) for k, v in env.items()}}
        self.proc, self._log = None, None
        if start:
            self.start()

    def start(self):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout=60):
        wait_http(self.url + "/readyz", timeout=timeout, proc=self.proc)
        return self

    def wait_alive(self, timeout=60):
        wait_http(self.url + "/healthz", timeout=timeout, proc=self.proc)
        return self

    def read_log(self):
        """The log so far, as text."""
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def logs(self):
        """The JSON log lines so far (every line must be JSON)."""
        with open(self.log_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def wait_log(self, predicate, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.logs() if predicate(e)]
            if found:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"no matching log line in {timeout}s; last lines: {self.logs()[-5:]}")

    def stop(self):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class HttpClient:
    """The same small interface as Flask's test client, over real HTTP."""

    def __init__(self, url):
        self.url = url
        self.session = requests.Session()

    def open(self, method, path, data=None, json_body=None, headers=None, files=None):
        r = self.session.request(method, self.url + path, data=data, json=json_body, headers=headers,
                                 files=files, timeout=30)
        return r.status_code, r.headers, r.content


class FlaskClient:
    def __init__(self, app):
        self.client = app.test_client()

    def open(self, method, path, data=None, json_body=None, headers=None, files=None):
        if files:
            data = {**(data or {}), **{k: (io.BytesIO(v[1]), v[0]) for k, v in files.items()}}
        r = self.client.open(path, method=method, data=data, json=json_body, headers=headers)
        return r.status_code, r.headers, r.get_data()


def openapi_operation(doc, path, method):
    """The OpenAPI operation serving ``path`` (a concrete path) with ``method``."""
    if path in doc["paths"]:
        return doc["paths"][path].get(method.lower())
    if path.count("/") == 1 and "/{filename}" in doc["paths"]:
        return doc["paths"]["/{filename}"].get(method.lower())
    return None


def validate_against_openapi(doc, path, method, status, headers, body):
    """Check a response against the document: its status is documented for the
    operation, and a JSON body validates against the documented schema."""
    import jsonschema
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    op = openapi_operation(doc, path, method)
    content_type = headers.get("Content-Type", "")
    if op is None:
        assert status in (404, 405), f"{method} {path} is not in the OpenAPI document but answered {status}"
        schema = {"$ref": "#/components/schemas/Error"}
    else:
        responses = op["responses"]
        assert str(status) in responses, f"{method} {path} answered {status}, not documented ({list(responses)})"
        content = responses[str(status)].get("content", {})
        if "application/json" not in content:
            return
        schema = content["application/json"]["schema"]
        if content_type == "application/octet-stream" and content_type in content:
            # The binary tensor data extension: the JSON reply, then binary data.
            body, content_type = body[:int(headers["Inference-Header-Content-Length"])], "application/json"
    assert content_type.startswith("application/json"), (method, path, status, headers)
    registry = Registry().with_resource("urn:openapi", DRAFT202012.create_resource(doc))
    jsonschema.Draft202012Validator(_rebase(schema), registry=registry).validate(json.loads(body))


def _rebase(schema):
    """Point "#/components/..." refs of an inline schema at the registered document."""
    if isinstance(schema, dict):
        return {k: ("urn:openapi" + v if k == "$ref" and v.startswith("#") else _rebase(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_rebase(v) for v in schema]
    return schema
