"""POST /feedback: a person says what the digit really was, and the correction is stored for training.

The request carries the drawing as /predict took it; what is stored is the 28x28 input the
model saw, made by the same preprocessing, because that is what training needs. The record's
id is the sha256 of those 784 pixels, so the same drawing sent twice is stored once: records
are create-only (service/contract.py has the layout), and a second one is a duplicate. Only
a drawing is stored (service/contract.py: not_a_drawing): a dot, a blob or noise is 422
not_a_drawing.

What is stored about the sender: ``client_id``, an opaque id the page makes up for itself,
and, when FEEDBACK_NETWORK_SECRET is set, ``network``: a keyed hash of the client's IPv4 /24
or IPv6 /64 (service/clients.py), so triage can see that many corrections came from one
network. Never an address: that only feeds the rate limits, in memory.
"""
import base64
import datetime
import hashlib
import json
import logging
import math
import re

from flask import request

from . import clients, contract, ink, payload, preprocess
from .config import VERSION_NAME
from .errors import ApiError, json_response
from .metrics import UNKNOWN
from .ratelimit import RateLimiter
from .store import AlreadyExists, StoreError, open_store

log = logging.getLogger("service.feedback")

CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
FIELDS = {"image", "label", "predicted", "model_version", "client_id", "strokes"}
MAX_STROKES, MAX_POINTS = 64, 2000


def register(app, holder, cfg):
    uri = cfg["FEEDBACK_URI"]
    store = open_store(uri) if uri else None  # a bad URI fails here, at start-up
    limiter = RateLimiter(cfg["FEEDBACK_RATE_LIMIT"], cfg["FEEDBACK_NETWORK_RATE_LIMIT"])
    trusted = cfg["FORWARDED_ALLOW_IPS"]
    network_key = clients.NetworkKey(cfg["FEEDBACK_NETWORK_SECRET"]) if cfg["FEEDBACK_NETWORK_SECRET"] else None

    @app.post("/feedback")
    def feedback():
        if store is None:
            raise ApiError("feedback_disabled", "this server does not take corrections (FEEDBACK_URI is not set)")
        address = clients.client_address(request.environ, trusted)
        wait = limiter.wait(clients.client_of(address), clients.network_of(address))
        if wait:
            app.metrics.observe_feedback("rate_limited", None)
            raise ApiError("rate_limited", f"too many corrections from here; retry in {wait} s",
                           headers={"Retry-After": str(wait)})
        try:
            fields, image = _parse(request)
            pixels = drawing(image, preprocess.Limits(cfg["MAX_IMAGE_PIXELS"], cfg["MAX_IMAGE_SIDE"]),
                             fields.get("strokes"))
        except ApiError:
            app.metrics.observe_feedback("rejected", None)
            raise
        record_id = hashlib.sha256(pixels.tobytes()).hexdigest()
        now = datetime.datetime.now(datetime.timezone.utc)
        record = {"id": record_id, "pixels": base64.b64encode(pixels.tobytes()).decode(), **fields,
                  "created_at": f"{now:%Y-%m-%dT%H:%M:%S.%f}"[:-3] + "Z",
                  "image_sha256": hashlib.sha256(image).hexdigest()}
        if network_key is not None and address is not None:
            record["network"] = network_key(address)
        status = _store(store, record, f"{now:%Y-%m-%d}")
        # The version a client names labels the metrics only if the store holds it.
        version = fields["model_version"]
        if version is not None and not holder.holds(version):
            version = UNKNOWN
        corrected = fields["predicted"] is not None and fields["predicted"] != fields["label"]
        app.metrics.observe_feedback(status, version, correction=corrected)
        return json_response({"id": record_id, "status": status}, 201 if status == "stored" else 200)


def drawing(image, limits, strokes=None):
    """The 28x28 input (uint8, ink 255) of ``image``, as /predict preprocesses it, if it
    is a drawing (service/contract.py: not_a_drawing, with the page's ``strokes`` if sent).
    Raises ApiError 400/413/415/422."""
    im = preprocess.decode(image, limits)
    pixels = contract.to_pixels(preprocess.to_mnist(im))
    inked = ink.ink_image(im)
    why = contract.not_a_drawing(pixels, strokes, max(inked.size) if inked is not None else None)
    if why:
        raise ApiError("not_a_drawing", f"{why}; only drawings of a digit are stored, so draw one with the pen")
    return pixels


def _parse(req):
    """(the record's fields, the image bytes) of a feedback request. Raises ApiError 400/415."""
    if req.mimetype != "application/json":
        what = f"Content-Type {req.mimetype!r}" if req.mimetype else "a request without a Content-Type"
        raise ApiError("unsupported_media_type", f"{what} is not accepted; send application/json")
    body = payload.load_json(req.get_data(cache=False))
    if not isinstance(body, dict):
        raise ApiError("invalid_json", f"the body must be a JSON object, not {type(body).__name__}")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise ApiError("invalid_field", f"unknown fields {unknown[:5]}; send {sorted(FIELDS)}")
    for name in ("image", "label"):
        if name not in body:
            raise ApiError("missing_field", f"the JSON has no '{name}' field; send {{\"image\": ..., \"label\": 0-9}}")
    fields = {"label": _digit(body["label"], "label"), "predicted": None, "model_version": None, "client_id": None}
    if body.get("predicted") is not None:
        fields["predicted"] = _digit(body["predicted"], "predicted")
    if body.get("model_version") is not None:
        if not isinstance(body["model_version"], str) or not VERSION_NAME.fullmatch(body["model_version"]):
            raise ApiError("invalid_field", "'model_version' must be the version /predict answered with")
        fields["model_version"] = body["model_version"]
    if body.get("client_id") is not None:
        if not isinstance(body["client_id"], str) or not CLIENT_ID.fullmatch(body["client_id"]):
            raise ApiError("invalid_field", "'client_id' must be 1-64 letters, digits, '-' or '_'")
        fields["client_id"] = body["client_id"]
    if body.get("strokes") is not None:
        fields["strokes"] = _strokes(body["strokes"])
    return fields, payload.decode_image_field(body["image"], "image")


def _digit(value, name):
    if type(value) is not int or not 0 <= value <= 9:  # bool is an int subclass; it is not a digit
        raise ApiError("invalid_field", f"'{name}' must be a whole number from 0 to 9, not {json.dumps(value)[:20]}")
    return value


def _strokes(strokes):
    """The pad's strokes, [[[x, y], ...], ...] in pad fractions 0..1, bounded in size."""
    ok = isinstance(strokes, list) and len(strokes) <= MAX_STROKES and all(
        isinstance(s, list) and s and all(
            isinstance(p, list) and len(p) == 2 and all(
                type(v) in (int, float) and math.isfinite(v) and 0 <= v <= 1 for v in p) for p in s)
        for s in strokes)
    if not ok or sum(map(len, strokes)) > MAX_POINTS:
        raise ApiError("invalid_field", f"'strokes' must be at most {MAX_STROKES} strokes and {MAX_POINTS} points "
                                        "in all, each point [x, y] with 0 <= x, y <= 1")
    return strokes


def _store(store, record, day):
    """Create the record, then its day's marker; "stored", or "duplicate" if it was there."""
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    try:
        try:
            store.create(contract.record_key(record["id"]), data)
            status = "stored"
        except AlreadyExists:
            status = "duplicate"
        try:
            store.create(contract.day_key(day, record["id"]), b"")
        except AlreadyExists:
            pass
    except StoreError as e:
        log.warning(f"cannot store feedback {record['id'][:12]}: {e}",
                    extra={"fields": {"feedback_uri": store.uri, "record_id": record["id"]}})
        raise ApiError("store_unavailable", "the correction could not be stored right now; send it again later") \
            from None
    return status
