"""Service configuration from environment variables (the same names in the README and Knative).

=====================  ===================  ==============================================
Variable               Default              Meaning
=====================  ===================  ==============================================
PORT                   8080                 TCP port to listen on (Knative sets it)
HOST                   0.0.0.0              address to bind (tests use 127.0.0.1)
MODEL_URI              model-store          model store: a directory, a PVC mount or gs://bucket/prefix
MODEL_POLL_SECONDS     30                   how often to check LATEST for a new model; 0 turns polling off
MAX_BODY_BYTES         1048576              largest request body (413 above)
MAX_IMAGE_PIXELS       4194304              largest image, width x height (413 above; 2048x2048)
MAX_BATCH              64                   most images in one batch request (413 above)
CORS_ORIGINS           (empty)              comma-separated origins allowed to call the API, or *
LOG_LEVEL              info                 debug, info, warning or error
FRONTEND_DIR           <repo>/frontend      static files served at /
WEB_CONCURRENCY        1                    worker processes
THREADS                1                    Python threads per worker that run requests
GRACEFUL_TIMEOUT       20                   seconds in-flight requests get to finish after SIGTERM
=====================  ===================  ==============================================
"""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _int(env, name, default, minimum):
    raw = env.get(name, "")
    if raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer; set it to a whole number (default {default})") from None
    if value < minimum:
        raise ValueError(f"{name}={value} is below the minimum of {minimum}")
    return value


def load(env=None):
    """Read the configuration from ``env`` (default os.environ). Raises ValueError naming the variable."""
    env = os.environ if env is None else env
    level = env.get("LOG_LEVEL", "info").strip().upper() or "INFO"
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"LOG_LEVEL={level!r}; use debug, info, warning or error")
    origins = [o.strip().rstrip("/") for o in env.get("CORS_ORIGINS", "").split(",") if o.strip()]
    return {
        "PORT": _int(env, "PORT", 8080, 0),
        "HOST": env.get("HOST", "").strip() or "0.0.0.0",
        "MODEL_URI": env.get("MODEL_URI", "").strip() or "model-store",
        "MODEL_POLL_SECONDS": _int(env, "MODEL_POLL_SECONDS", 30, 0),
        "MAX_BODY_BYTES": _int(env, "MAX_BODY_BYTES", 1 << 20, 1),
        "MAX_IMAGE_PIXELS": _int(env, "MAX_IMAGE_PIXELS", 2048 * 2048, 1),
        "MAX_BATCH": _int(env, "MAX_BATCH", 64, 1),
        "CORS_ORIGINS": origins,
        "LOG_LEVEL": level,
        "FRONTEND_DIR": env.get("FRONTEND_DIR", "").strip() or os.path.join(ROOT, "frontend"),
        "WEB_CONCURRENCY": _int(env, "WEB_CONCURRENCY", 1, 1),
        "THREADS": _int(env, "THREADS", 1, 1),
        "GRACEFUL_TIMEOUT": _int(env, "GRACEFUL_TIMEOUT", 20, 1),
    }
