"""gunicorn settings, for serving the app with gunicorn instead of Granian::

    gunicorn -c python:service.gunicorn_conf

The container runs ``python -m service`` (Granian), which used about two thirds of
gunicorn's CPU per request; this is for a platform that standardises on gunicorn, and
the API contract tests run against it as well. It reads the same environment variables
(``python -m service --help``) and behaves the same way: the app is imported once in the
master and the workers fork from it, each worker takes its own metrics slot (so
/metrics counts the whole server) and loads the model, the logs are JSON lines, and on
SIGTERM in-flight requests finish (up to GRACEFUL_TIMEOUT).

ONNX Runtime is not imported before the fork, unlike under ``python -m service``: a
gunicorn worker forked after that import aborted in ONNX Runtime's teardown on exit.
"""
from gunicorn.glogging import Logger

from service import config as _config
from service import log as _log

_cfg = _config.load()

wsgi_app = "service.app:create_app({'START_LOADER': False})"
preload_app = True
bind = f"[{_cfg['HOST']}]:{_cfg['PORT']}" if ":" in _cfg["HOST"] else f"{_cfg['HOST']}:{_cfg['PORT']}"
workers = _cfg["WEB_CONCURRENCY"]
threads = _cfg["THREADS"]
# gthread keeps connections alive (Knative's queue-proxy reuses them); with one thread
# the plain sync worker is cheaper.
worker_class = "gthread" if threads > 1 else "sync"
graceful_timeout = _cfg["GRACEFUL_TIMEOUT"]
keepalive = 75  # longer than any sensible proxy's idle timeout
loglevel = _cfg["LOG_LEVEL"].lower()
# gunicorn's own messages through the same JSON handler as everything else.
logconfig_dict = _log.dict_config(_cfg["LOG_LEVEL"])
logconfig_dict["loggers"]["gunicorn.error"] = {"handlers": [], "propagate": True}


class NoAccessLog(Logger):
    """The app writes one JSON line per request itself. Given a logging config, gunicorn
    would also build and write its own access line for every request."""

    def access(self, resp, req, environ, request_time):
        pass


logger_class = NoAccessLog
control_socket_disable = True  # no runtime control socket in $HOME: nothing manages it


def post_fork(server, worker):
    """In each new worker: take a metrics slot and load the model."""
    from service.app import start_worker

    start_worker(worker.app.wsgi())
