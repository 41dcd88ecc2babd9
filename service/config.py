"""The service's configuration: environment variables only, each defined once in SETTINGS.

``python -m service --help`` prints the table; the Knative manifest sets the same names.
"""
import ipaddress
import os
import re

from .contract import DEFAULT_MODEL_URI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MIN_SECRET = 16


def _int(minimum):
    def parse(name, raw):
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not an integer; set it to a whole number") from None
        if value < minimum:
            raise ValueError(f"{name}={value} is below the minimum of {minimum}")
        return value
    return parse


def _text(name, raw):
    return raw.strip()


def _level(name, raw):
    level = raw.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"{name}={raw!r}; use debug, info, warning or error")
    return level


def _origins(name, raw):
    return [o.strip().rstrip("/") for o in raw.split(",") if o.strip()]


def _networks(name, raw):
    try:
        return [ipaddress.ip_network(n.strip(), strict=False) for n in raw.split(",") if n.strip()]
    except ValueError as e:
        raise ValueError(f"{name}={raw!r}: {e}; give addresses or networks like 127.0.0.1,10.0.0.0/8") from None


def _secret(name, raw):
    raw = raw.strip()
    if raw and len(raw) < MIN_SECRET:
        raise ValueError(f"{name} is {len(raw)} characters; use at least {MIN_SECRET} random ones "
                         f"(python -c 'import secrets; print(secrets.token_hex(32))')")
    return raw


def _version(name, raw):
    raw = raw.strip()
    if raw and not VERSION_NAME.fullmatch(raw):
        raise ValueError(f"{name}={raw!r} is not a model version name (like 20261202T000028Z-a6785ae6)")
    return raw


# (name, default, parser, meaning). The defaults are what an unset or empty variable means.
SETTINGS = [
    ("PORT", "8080", _int(0), "TCP port to listen on (Knative sets it)"),
    ("HOST", "0.0.0.0", _text, "address to bind (make run and the tests use 127.0.0.1)"),
    ("MODEL_URI", DEFAULT_MODEL_URI, _text, "model store: a directory, a PVC mount or gs://bucket/prefix"),
    ("MODEL_VERSION", "", _version, "serve exactly this version and ignore LATEST (pinned); empty: follow LATEST"),
    ("MODEL_POLL_SECONDS", "30", _int(0), "how often to check LATEST for a new model; 0 turns polling off"),
    ("FEEDBACK_URI", "", _text, "feedback store for POST /feedback (directory or gs://bucket/prefix); empty: off"),
    ("FEEDBACK_RATE_LIMIT", "30", _int(0),
     "corrections one client (an IPv4 address, an IPv6 /64) may send per minute (a pod takes 20 times that); "
     "0 turns every feedback limit off"),
    ("FEEDBACK_NETWORK_RATE_LIMIT", "120", _int(0),
     "corrections one network (an IPv4 /24, an IPv6 /48) may send per minute; 0 turns this limit off"),
    ("FEEDBACK_NETWORK_SECRET", "", _secret,
     "secret keying the network stored with each correction (HMAC-SHA256 of the client's IPv4 /24 or IPv6 /64, "
     "for triage); empty: no network is stored"),
    ("FORWARDED_ALLOW_IPS", "", _networks,
     "proxies (addresses or networks, comma-separated) whose X-Forwarded-For entries are believed: the client is "
     "the right-most entry not among them; empty: the peer's address, X-Forwarded-For ignored"),
    ("MAX_BODY_BYTES", "1048576", _int(1), "largest request body, with Content-Length or chunked (413 above)"),
    ("READ_TIMEOUT_SECONDS", "10", _int(1),
     "time a request's headers and body may take to arrive (408 after); an idle keep-alive connection is closed "
     "after it too"),
    ("MAX_CONNECTIONS", "8192", _int(1),
     "connections one worker holds open, idle ones included (Granian's backpressure); more wait in the kernel's "
     "backlog, so this many idle or slow-header connections must not starve GET /healthz"),
    ("MAX_IMAGE_PIXELS", "262144", _int(1),
     "largest image, width x height (413 above; 512x512, so the costliest image takes a few times a canvas's time)"),
    ("MAX_IMAGE_SIDE", "1024", _int(1), "longest side of an image, in pixels (413 above)"),
    ("MAX_BATCH", "64", _int(1), "most images in one batch request (413 above)"),
    ("MAX_BATCH_PIXELS", "6553600", _int(1),
     "most pixels of all the images of one request together (413 above; sixty-four 320x320 canvases)"),
    ("CORS_ORIGINS", "", _origins, "comma-separated origins allowed to call the API, or *"),
    ("LOG_LEVEL", "info", _level, "debug, info, warning or error"),
    ("FRONTEND_DIR", os.path.join(ROOT, "frontend"), _text, "static files served at /"),
    ("WEB_CONCURRENCY", "1", _int(1), "worker processes"),
    ("THREADS", "1", _int(1), "threads per worker for requests that wait on a store (POST /feedback)"),
    ("GRACEFUL_TIMEOUT", "20", _int(1), "seconds in-flight requests get to finish after SIGTERM"),
]


def load(env=None):
    """The configuration from ``env`` (default os.environ). Raises ValueError naming the variable."""
    env = os.environ if env is None else env
    cfg = {}
    for name, default, parse, _ in SETTINGS:
        raw = env.get(name, "")
        cfg[name] = parse(name, raw if raw.strip() else default)
    return cfg


def table():
    """SETTINGS as the text table ``--help`` prints."""
    rows = [(name, default.replace(ROOT, "<repo>") or "(empty)", meaning) for name, default, _, meaning in SETTINGS]
    width = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return "\n".join(f"{n:<{width[0]}}  {d:<{width[1]}}  {m}" for n, d, m in rows)
