"""The Flask application: each group of endpoints is registered by one function.

``create_app(config)`` builds the app; ``config`` overrides the environment (service/config.py).
``python -m service`` serves it with Granian.
"""
import warnings

from flask import Flask
from PIL import Image

from . import config as config_module
from . import errors, feedback, log, oip, ops, predict, static
from .metrics import Metrics
from .model import ModelHolder
from .wsgi import RequestLayer

# The frontend is plain files: no inline script or style, so the strictest policy fits.
# img-src allows data: for the 28x28 preview the API returns as a data URL.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
SECURITY_HEADERS = [("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
                    ("Referrer-Policy", "no-referrer")]


def create_app(config=None):
    """Build the app. ``config`` (a dict) overrides environment settings; with
    ``START_LOADER: False`` the model loader is not started (``python -m service`` starts
    it in each worker after fork)."""
    cfg = {**config_module.load(), **(config or {})}
    log.setup(cfg["LOG_LEVEL"])
    # Pillow's own bomb check agrees with ours; its warning is noise, since we answer 413.
    Image.MAX_IMAGE_PIXELS = cfg["MAX_IMAGE_PIXELS"]
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)

    app = Flask(__name__, static_folder=None)
    # The front (service/front.py) bounds bodies first; this holds under Flask's test client too.
    app.config["MAX_CONTENT_LENGTH"] = cfg["MAX_BODY_BYTES"]
    app.config["MAX_FORM_MEMORY_SIZE"] = cfg["MAX_BODY_BYTES"]
    holder = ModelHolder(cfg["MODEL_URI"], cfg["MODEL_POLL_SECONDS"], cfg["MODEL_VERSION"])

    predict.register(app, holder, cfg)
    feedback.register(app, holder, cfg)
    ops.register(app, holder, feedback_on=bool(cfg["FEEDBACK_URI"]))
    oip.register(app, holder, cfg["MAX_BATCH"])
    route_of = static.register(app, cfg["FRONTEND_DIR"])  # last: it answers every other GET
    errors.register(app, cfg["MAX_BODY_BYTES"])

    routes = sorted({rule.rule for rule in app.url_map.iter_rules()})
    # Room for the main process, the workers and a reload's second set of workers.
    app.metrics = Metrics(routes, 2 * cfg["WEB_CONCURRENCY"] + 2)
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
