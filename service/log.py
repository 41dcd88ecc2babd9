"""Structured logs: one JSON object per line on stderr.

The keys follow Google Cloud Logging's conventions (``severity``, ``message``), so on GKE
each line becomes a structured entry; locally ``jq`` reads them. Extra fields are passed
with ``log.info("...", extra={"fields": {...}})``. The per-request line skips the logging
machinery (see request_line): it is written on every request.
"""
import json
import logging
import logging.config
import os
import time

_request_log_enabled = True


def _timestamp(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {
            "time": _timestamp(record.created),
            "severity": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def dict_config(level="INFO"):
    """The logging configuration (for logging.config.dictConfig): every logger, ours and
    the server's, through one JSON handler on stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "json"}},
        "root": {"handlers": ["stderr"], "level": level},
        # Granian's own loggers: through the root handler like the rest.
        "loggers": {"_granian": {"handlers": [], "propagate": True},
                    "granian.access": {"handlers": [], "propagate": True}},
    }


def setup(level="INFO"):
    """Send every logger (ours, Granian's, werkzeug's) through one JSON handler on stderr."""
    logging.config.dictConfig(dict_config(level))
    global _request_log_enabled
    _request_log_enabled = logging.getLogger("service.request").isEnabledFor(logging.INFO)


def request_line(method, path, status, seconds, model_version, request_id):
    """The one log line per request (INFO, logger service.request), same shape as the others.

    One os.write of a line shorter than the pipe buffer is atomic, so lines from threads
    and worker processes never interleave, and no lock is needed.
    """
    if not _request_log_enabled:
        return
    line = json.dumps({"time": _timestamp(time.time()), "severity": "INFO", "logger": "service.request",
                       "message": "request", "method": method, "path": path[:512], "status": status,
                       "latency_ms": round(seconds * 1000, 3), "model_version": model_version,
                       "request_id": request_id})
    os.write(2, line.encode() + b"\n")


def error_line(exc, method, path, request_id):
    """One ERROR line for an exception no handler expected: its type, message and the line
    that raised it, with the request id; the client gets the id, not the traceback."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
    logging.getLogger("service").error(
        f"unhandled error on {method} {path[:200]}: {type(exc).__name__}: {str(exc)[:300]}",
        extra={"fields": {"request_id": request_id, "where": where}})
