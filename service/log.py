"""Structured logs: one JSON object per line on stderr.

The keys follow Google Cloud Logging's conventions (``severity``, ``message``), so on GKE
each line becomes a structured entry; locally ``jq`` reads them. Extra fields are passed
with ``log.info("...", extra={"fields": {...}})``.
"""
import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
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


def setup(level="INFO"):
    """Send every logger (ours, gunicorn's, werkzeug's) through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
