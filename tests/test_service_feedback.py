"""POST /feedback: what is stored, where, once; every way a request can be wrong; the store
on a directory and on gs:// (fake-gcs-server, create-only); the metrics it feeds."""
import base64
import json
import os

import numpy as np
import pytest

from PIL import Image

from service import clients, contract, preprocess
from service.app import create_app
from service.store import open_store
from service_helpers import (FlaskClient, b64, data_url, draw_digit, jpeg_bytes, openapi_document, png_bytes,
                             publish_copy, validate_against_openapi)

SEVEN = png_bytes(draw_digit(7))
BLANK = png_bytes(draw_digit(7, ink=(0, 0, 0, 0)))
DOC = openapi_document()


def make_client(model_uri, feedback_uri, **cfg):
    app = create_app({"MODEL_URI": model_uri, "MODEL_POLL_SECONDS": 0, "LOG_LEVEL": "WARNING",
                      "FEEDBACK_URI": feedback_uri, "FEEDBACK_RATE_LIMIT": 0, **cfg})
    assert app.model_holder.wait_ready(60)
    return app, FlaskClient(app)


def send(client, body=None, **kw):
    """POST /feedback; the response is checked against the OpenAPI document."""
    status, headers, raw = client.open("POST", "/feedback", json_body=body, **kw)
    validate_against_openapi(DOC, "/feedback", "POST", status, headers, raw)
    return status, json.loads(raw)


def test_a_correction_is_stored_once_as_the_input_the_model_saw(trained_store, store_uri):
    app, client = make_client(trained_store, store_uri)
    version = app.model_holder.current.version
    body = {"image": data_url(SEVEN), "label": 1, "predicted": 7, "model_version": version, "client_id": "w-1",
            "strokes": [[[0.5, 0.1], [0.5, 0.9]]]}
    status, answer = send(client, body)
    assert status == 201 and answer["status"] == "stored"
    store = open_store(store_uri)
    record = json.loads(store.read(contract.record_key(answer["id"])))
    pixels = np.frombuffer(base64.b64decode(record["pixels"]), np.uint8).reshape(28, 28)
    expected = contract.to_pixels(preprocess.preprocess(SEVEN, preprocess.Limits(10 ** 6)))
    np.testing.assert_array_equal(pixels, expected)  # exactly what /predict feeds the model
    import hashlib

    assert answer["id"] == hashlib.sha256(pixels.tobytes()).hexdigest() == record["id"]
    assert record["image_sha256"] == hashlib.sha256(SEVEN).hexdigest()
    assert {k: record[k] for k in ("label", "predicted", "model_version", "client_id", "strokes")} == \
        {k: body[k] for k in ("label", "predicted", "model_version", "client_id", "strokes")}
    assert record["created_at"].endswith("Z")
    day = record["created_at"][:10]
    assert store.list(f"{contract.DAYS}/{day}") == [contract.day_key(day, answer["id"])]
    # The same drawing again (even as a JPEG of it that preprocesses alike would be another id) is a duplicate.
    status, again = send(client, body)
    assert (status, again) == (200, {"id": answer["id"], "status": "duplicate"})
    assert store.list(contract.RECORDS) == [contract.record_key(answer["id"])]
    # A confirmation (label == predicted) is training data too.
    status, confirmed = send(client, {"image": data_url(png_bytes(draw_digit(0))), "label": 0, "predicted": 0})
    assert status == 201 and confirmed["status"] == "stored"
    metrics = app.metrics.render()
    assert f'digitdraw_feedback_total{{result="stored",model_version="{version}"}} 2' in metrics  # with the confirmation
    assert f'digitdraw_feedback_total{{result="duplicate",model_version="{version}"}} 1' in metrics
    assert f'digitdraw_corrections_total{{model_version="{version}"}} 2' in metrics  # the first and its duplicate


@pytest.mark.parametrize("body,status,code", [
    ({"label": 1}, 400, "missing_field"),
    ({"image": "IMAGE"}, 400, "missing_field"),
    ({"image": "IMAGE", "label": "1"}, 400, "invalid_field"),
    ({"image": "IMAGE", "label": 1.0}, 400, "invalid_field"),
    ({"image": "IMAGE", "label": 10}, 400, "invalid_field"),
    ({"image": "IMAGE", "label": -1}, 400, "invalid_field"),
    ({"image": "IMAGE", "label": True}, 400, "invalid_field"),
    ({"image": "IMAGE", "label": 1, "predicted": False}, 400, "invalid_field"),
    ({"image": "IMAGE", "label": 1, "client_id": "has spaces"}, 400, "invalid_field"),
    ({"image": "IMAGE", "label": 1, "client_id": "x" * 65}, 400, "invalid_field"),
    ({"image": "IMAGE", "label": 1, "model_version": "../etc/passwd"}, 400, "invalid_field"),
    ({"image": "IMAGE", "label": 1, "strokes": [[[0.5, 1.5]]]}, 400, "invalid_field"),
    ({"image": "IMAGE", "label": 1, "strokes": [[[0.1, 0.1]]] * 65}, 400, "invalid_field"),
    ({"image": "IMAGE", "label": 1, "strokes": [[[0.1, 0.1]] * 2001]}, 400, "invalid_field"),
    ({"image": "IMAGE", "label": 1, "extra": 1}, 400, "invalid_field"),
    ({"image": "not base64!", "label": 1}, 400, "invalid_base64"),
    ({"image": "data:image/gif;base64,R0lGODlh", "label": 1}, 415, "unsupported_image_format"),
    ({"image": b64(b"GIF89a" + b"\0" * 20), "label": 1}, 415, "unsupported_image_format"),
    ({"image": data_url(BLANK), "label": 1}, 422, "empty_canvas"),
    ({"image": data_url(png_bytes(Image.new("L", (1, 1), 0))), "label": 1}, 422, "not_a_drawing"),
    ({"image": data_url(png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)))),
      "label": 1}, 422, "not_a_drawing"),
    ({"image": "IMAGE", "label": 1, "strokes": [[[0.5, 0.5]], [[0.51, 0.5], [0.5, 0.52]]]}, 422, "not_a_drawing"),
    ({"image": data_url(png_bytes(draw_digit(7, size=2000))), "label": 1}, 413, "image_too_large"),
])
def test_bad_corrections_get_their_own_code(trained_store, tmp_path, body, status, code):
    app, client = make_client(trained_store, str(tmp_path / "feedback"))
    body = {k: data_url(SEVEN) if v == "IMAGE" else v for k, v in body.items()}
    got, answer = send(client, body)
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert not (tmp_path / "feedback" / "records").exists() or not os.listdir(tmp_path / "feedback" / "records")
    assert 'digitdraw_feedback_total{result="rejected"' in app.metrics.render()


def test_not_json_is_415_and_too_big_is_413(trained_store, tmp_path):
    _, client = make_client(trained_store, str(tmp_path / "feedback"), MAX_BODY_BYTES=20_000)
    status, answer = send(client, data=jpeg_bytes(draw_digit(7)), headers={"Content-Type": "image/jpeg"})
    assert (status, answer["error"]["code"]) == (415, "unsupported_media_type")
    status, answer = send(client, {"image": b64(b"\0" * 30_000), "label": 1})
    assert (status, answer["error"]["code"]) == (413, "body_too_large")


def test_without_a_feedback_store_the_route_says_so(trained_store):
    app, client = make_client(trained_store, "")
    status, answer = send(client, {"image": data_url(SEVEN), "label": 1})
    assert (status, answer["error"]["code"]) == (404, "feedback_disabled")
    assert client.open("GET", "/readyz")[2] and json.loads(client.open("GET", "/readyz")[2])["feedback"] is False


def test_an_unreachable_store_is_503_and_leaves_nothing_behind(trained_store, tmp_path, fake_gcs):
    (tmp_path / "a-file").write_text("not a directory")
    for uri in (str(tmp_path / "a-file" / "feedback"), "gs://no-such-feedback-bucket/x"):
        _, client = make_client(trained_store, uri)
        status, answer = send(client, {"image": data_url(SEVEN), "label": 1})
        assert (status, answer["error"]["code"]) == (503, "store_unavailable")
        assert "a-file" not in answer["error"]["message"] and "no-such" not in answer["error"]["message"]
    assert sorted(os.listdir(tmp_path)) == ["a-file"]


def test_the_serving_identity_only_ever_creates(trained_store, fake_gcs):
    """On gs:// every write is a create with if_generation_match=0: an existing record is never
    overwritten, even by a different request that claims its id."""
    fake_gcs.make_bucket("create-only")
    uri = "gs://create-only/fb"
    _, client = make_client(trained_store, uri)
    status, answer = send(client, {"image": data_url(SEVEN), "label": 1})
    store = open_store(uri)
    key = contract.record_key(answer["id"])
    before = store.read(key)
    status, again = send(client, {"image": data_url(SEVEN), "label": 4, "client_id": "someone-else"})
    assert (status, again["status"]) == (200, "duplicate")
    assert store.read(key) == before  # the first record stands


def test_a_client_named_version_labels_the_metrics_only_if_the_store_holds_it(store, tmp_path):
    """Made-up versions count as "unknown"; a version the store holds (a canary another
    revision serves) keeps its own label, and the served one's is never taken."""
    app, client = make_client(store, str(tmp_path / "feedback"))
    served = app.model_holder.current.version
    canary = "20261205T000000Z-cafe0001"
    publish_copy(store, canary, move=False)
    for k in range(20):
        send(client, {"image": data_url(SEVEN), "label": 1, "predicted": 7, "model_version": f"20261205T0000{k:02d}Z-bogus"})
    send(client, {"image": data_url(SEVEN), "label": 1, "predicted": 7, "model_version": canary})
    send(client, {"image": data_url(SEVEN), "label": 1, "predicted": 7, "model_version": served})
    metrics = app.metrics.render()
    assert 'digitdraw_corrections_total{model_version="unknown"} 20' in metrics
    assert f'digitdraw_corrections_total{{model_version="{canary}"}} 1' in metrics
    assert f'digitdraw_corrections_total{{model_version="{served}"}} 1' in metrics
    assert "bogus" not in metrics


def test_a_correction_carries_its_networks_keyed_hash_never_the_address(trained_store, tmp_path):
    secret = "correct horse battery staple"
    app, client = make_client(trained_store, str(tmp_path / "on"), FEEDBACK_NETWORK_SECRET=secret)
    status, answer = send(client, {"image": data_url(SEVEN), "label": 7})
    record = json.loads((tmp_path / "on" / contract.record_key(answer["id"])).read_text())
    assert record["network"] == clients.NetworkKey(secret)(clients.parse("127.0.0.1"))  # the test client's
    assert "127.0.0" not in json.dumps(record)
    _, client = make_client(trained_store, str(tmp_path / "off"))
    _, answer = send(client, {"image": data_url(SEVEN), "label": 7})
    assert "network" not in json.loads((tmp_path / "off" / contract.record_key(answer["id"])).read_text())
