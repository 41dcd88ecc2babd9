"""The Flask application: prediction API, health, metrics, Open Inference Protocol and the frontend.

``create_app(config)`` builds the app; ``config`` overrides the environment (see
service/config.py). ``python -m service`` serves it with Granian.
"""
import json
import logging
import os
import re
import time
import warnings

import numpy as np
from flask import Flask, Response, request, send_from_directory
from PIL import Image
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from . import config as config_module
from . import log as log_module
from . import oip, openapi, payload, preprocess
from .errors import ApiError, json_response, not_ready
from .metrics import Metrics
from .model import ModelHolder, softmax
from .wsgi import MODEL_VERSION, RequestLayer

# The frontend is plain files: no inline script or style, so the strictest policy fits.
# img-src allows data: for the 28x28 preview the API returns as a data URL.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
SECURITY_HEADERS = [("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
                    ("Referrer-Policy", "no-referrer")]
STATIC_ROUTE = "/<path:filename>"
STATUS_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
                415: "unsupported_media_type", 500: "internal_error"}


def create_app(config=None):
    """Build the app. ``config`` (a dict) overrides environment settings; with
    ``START_LOADER: False`` the model loader is not started (``python -m service`` starts
    it in each worker after fork)."""
    cfg = {**config_module.load(), **(config or {})}
    log_module.setup(cfg["LOG_LEVEL"])
    # Pillow's own bomb check agrees with ours; its warning is noise, since we answer 413.
    Image.MAX_IMAGE_PIXELS = cfg["MAX_IMAGE_PIXELS"]
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)

    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = cfg["MAX_BODY_BYTES"]
    app.config["MAX_FORM_MEMORY_SIZE"] = cfg["MAX_BODY_BYTES"]
    holder = ModelHolder(cfg["MODEL_URI"], cfg["MODEL_POLL_SECONDS"])
    frontend = os.path.abspath(cfg["FRONTEND_DIR"])
    max_pixels, max_batch = cfg["MAX_IMAGE_PIXELS"], cfg["MAX_BATCH"]
    openapi_doc = json.dumps(openapi.document(), indent=1)

    # ---- API -----------------------------------------------------------------------------

    @app.post("/predict")
    def predict():
        model = holder.current  # read once: a hot swap never lands inside a request
        if model is None:
            raise not_ready(holder)
        images, want_preview, batch = payload.parse_predict(request, max_batch)
        inputs = []
        for i, data in enumerate(images):
            try:
                inputs.append(preprocess.preprocess(data, max_pixels))
            except ApiError as e:
                if batch:
                    e.message = f"images[{i}]: {e.message}"
                raise
        x = np.stack(inputs)[:, None]
        started = time.perf_counter()
        logits = model.logits(x)
        app.metrics.observe_inference(time.perf_counter() - started, len(inputs))
        request.environ[MODEL_VERSION] = model.version
        predictions = []
        probabilities = softmax(logits.astype(np.float64))
        for xi, p, rounded in zip(inputs, probabilities, np.round(probabilities, 6).tolist()):
            digit = int(p.argmax())
            result = {"digit": digit, "confidence": rounded[digit], "probabilities": rounded,
                      "model_version": model.version}
            if want_preview:
                result["preview"] = preprocess.preview_data_url(xi)
            predictions.append(result)
        if batch:
            return json_response({"predictions": predictions, "model_version": model.version})
        return json_response(predictions[0])

    @app.get("/healthz")
    def healthz():
        return json_response({"status": "alive"})

    @app.get("/readyz")
    def readyz():
        model = holder.current
        if model is None:
            raise not_ready(holder)
        return json_response({"status": "ready", "model_version": model.version})

    @app.get("/model")
    def model_info():
        model = holder.current
        if model is None:
            raise not_ready(holder)
        return json_response(model.meta)

    @app.get("/metrics")
    def metrics():
        return Response(app.metrics.render(), mimetype="text/plain; version=0.0.4")

    @app.get("/openapi.json")
    def openapi_json():
        return Response(openapi_doc, mimetype="application/json")

    oip.register(app, holder, max_batch)

    # ---- the frontend --------------------------------------------------------------------

    @app.get("/")
    def index():
        return static_file("index.html")

    @app.get(STATIC_ROUTE)
    def static_file(filename):
        # The catch-all GET would also match API paths used with the wrong method
        # (GET /predict); those are 405s, not missing files.
        allowed = api_methods.get("/" + filename)
        if allowed:
            raise MethodNotAllowed(valid_methods=sorted(allowed))
        if not os.path.isdir(frontend):
            raise NotFound(f"the frontend directory {frontend} does not exist; set FRONTEND_DIR")
        return send_from_directory(frontend, filename)

    api_methods = {rule.rule: rule.methods for rule in app.url_map.iter_rules() if "<" not in rule.rule}

    # ---- errors: always JSON ---------------------------------------------------------------

    @app.errorhandler(ApiError)
    def api_error(e):
        return json_response(e.body(), e.status)

    @app.errorhandler(HTTPException)
    def http_error(e):
        code = STATUS_CODES.get(e.code) or re.sub(r"\W+", "_", (e.name or "error").lower()).strip("_")
        message = e.description or e.name
        if e.code == 413:
            message = f"the request body is over the limit of {cfg['MAX_BODY_BYTES']} bytes; send a smaller image"
        elif e.code == 405:
            message = f"{request.method} is not allowed on {request.path}; use {', '.join(e.valid_methods or [])}"
        elif e.code == 404 and message == NotFound.description:
            message = f"nothing at {request.path}; see /openapi.json for the API"
        response = json_response({"error": {"code": code, "message": message}}, e.code)
        for name, value in e.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def internal_error(e):
        logging.getLogger("service").exception(f"unhandled error on {request.method} {request.path}")
        return json_response({"error": {"code": "internal_error",
                                        "message": "the server failed on this request; it has been logged"}}, 500)

    routes = sorted({rule.rule for rule in app.url_map.iter_rules()})
    # Room for the main process, the workers and a reload's second set of workers.
    slots = 2 * cfg["WEB_CONCURRENCY"] + 2
    app.metrics = Metrics(routes, slots)

    def route_of(path):  # the metrics label: the route that serves this path
        return path if path in api_methods or path == "/" else STATIC_ROUTE

    app.wsgi_app = RequestLayer(app.wsgi_app, app.metrics, route_of, SECURITY_HEADERS, cfg["CORS_ORIGINS"])
    app.model_holder = holder
    app.service_config = cfg
    holder.on_event = app.metrics.model_event
    if cfg.get("START_LOADER", True):
        holder.start()
    return app


def start_worker(app):
    """Per worker process, after fork: take a metrics slot and start loading the model.

    A model on local disk is loaded before the worker takes its first request, so a cold
    start never answers 503; a remote store loads in the background (healthz answers
    meanwhile) and retries there if the first attempt fails.
    """
    app.metrics.claim_slot()
    app.model_holder.start(first_attempt_inline=app.model_holder.is_local)
