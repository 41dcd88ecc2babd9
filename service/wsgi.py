"""Per-request bookkeeping, as a thin WSGI layer around the Flask app.

For every request: the request id (X-Request-Id, honoured when sane, else generated),
the security and CORS headers, the metrics, one JSON log line, and the last word on
errors: a request the front refused (service/front.py) is answered here with the same
JSON body as any other error, and an exception that escapes the app becomes a 500 with
that body and one log line rather than a traceback. Doing this at the WSGI level rather
than in Flask's before/after_request hooks costs a tenth as much: no context-local
proxies and no per-header validation, which matters when the whole request has a budget
of about a millisecond of CPU. (flask-cors would add its own after_request hook for what
is here five lines of allow-list.)
"""
import os
import re
import time

from . import log as log_module
from .errors import CODES, error_body, json_response

REQUEST_ID = re.compile(r"[A-Za-z0-9._:/=+-]{1,128}")
MODEL_VERSION = "digitdraw.model_version"  # environ key the handlers set for the log line and metrics
REJECTED = "digitdraw.rejected"  # environ key the front sets: (code, message) of a request it refused
# Browsers need none of these features for a drawing pad.
PERMISSIONS_POLICY = ("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()")
HSTS = ("Strict-Transport-Security", "max-age=31536000")


class RequestLayer:
    def __init__(self, app, metrics, route_of, security_headers, cors_origins):
        self.app, self.metrics, self.route_of = app, metrics, route_of
        self.security_headers = [*security_headers, PERMISSIONS_POLICY]
        self.cors = set(cors_origins)

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        rid = environ.get("HTTP_X_REQUEST_ID", "")
        if not REQUEST_ID.fullmatch(rid):
            rid = os.urandom(8).hex()
        environ["digitdraw.request_id"] = rid
        extra = [("X-Request-Id", rid), *self.security_headers]
        if environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[0].strip().lower() == "https":
            extra.append(HSTS)  # only over HTTPS: a browser ignores it on http, and must
        origin = environ.get("HTTP_ORIGIN")
        if origin and (origin in self.cors or "*" in self.cors):
            extra += [("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
                      ("Access-Control-Expose-Headers", "X-Request-Id, Retry-After")]
            if environ["REQUEST_METHOD"] == "OPTIONS":
                extra += [("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                          ("Access-Control-Allow-Headers", "Content-Type, X-Request-Id"),
                          ("Access-Control-Max-Age", "600")]
        status = [0]

        def start(status_line, headers, exc_info=None):
            status[0] = int(status_line[:3])
            return start_response(status_line, headers + extra, exc_info)

        rejected = environ.get(REJECTED)
        try:
            if rejected:
                body = json_response(error_body(*rejected), CODES[rejected[0]])(environ, start)
            else:
                body = self.app(environ, start)
        except Exception as e:  # a bug, not the client's fault: one line, not a traceback per request
            log_module.error_line(e, environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""), rid)
            body = json_response(error_body("internal_error", f"the server failed on this request; quote request id "
                                                              f"{rid} when you report it"), 500)(environ, start)
        seconds = time.perf_counter() - started
        path = environ.get("PATH_INFO", "")
        version = environ.get(MODEL_VERSION)
        self.metrics.observe_request(self.route_of(path), status[0], seconds, version)
        log_module.request_line(environ["REQUEST_METHOD"], path, status[0], seconds, version, rid)
        return body
