"""Every error the service answers with: a snake_case code, its HTTP status, and a message.

Every error response has the body ``{"error": {"code": ..., "message": ...}}``; the message
says what was wrong and what to send instead. CODES is the complete list: ApiError only
takes a code from it, and the OpenAPI document's Error schema lists exactly these.
"""
import json

from flask import Response

CODES = {
    "invalid_json": 400, "missing_field": 400, "invalid_field": 400, "invalid_base64": 400,
    "not_an_image": 400, "invalid_tensor": 400, "invalid_header": 400, "bad_request": 400,
    "not_found": 404, "feedback_disabled": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "body_too_large": 413, "image_too_large": 413, "too_many_images": 413,
    "unsupported_media_type": 415, "unsupported_image_format": 415,
    "empty_canvas": 422, "not_a_drawing": 422,
    "rate_limited": 429,
    "internal_error": 500,
    "model_not_ready": 503, "store_unavailable": 503,
}
# The code of an HTTP error Flask or Werkzeug raises itself (routing, body limits).
HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
              413: "body_too_large", 415: "unsupported_media_type"}


def json_response(obj, status=200):
    return Response(json.dumps(obj, separators=(",", ":")), status, mimetype="application/json")


def error_body(code, message):
    return {"error": {"code": code, "message": message}}


class ApiError(Exception):
    """An error answered as its code's status with the JSON error body; ``headers`` are
    added to the response (Retry-After, say)."""

    def __init__(self, code, message, headers=None):
        super().__init__(message)
        self.status, self.code, self.message = CODES[code], code, message
        self.headers = headers or {}

    def body(self):
        return error_body(self.code, self.message)


def loaded_model(holder):
    """The Model ``holder`` serves now, read once so that a hot swap never lands inside a
    request; a 503 model_not_ready ApiError while none is loaded."""
    model = holder.current
    if model is None:
        raise ApiError("model_not_ready", "no verified model is loaded yet; retry in a few seconds")
    return model


def register(app, max_body_bytes):
    """Answer every error as JSON: ours, Werkzeug's HTTP errors, and anything unexpected."""
    from flask import request

    from . import log
    from werkzeug.exceptions import HTTPException, NotFound

    @app.errorhandler(ApiError)
    def api_error(e):
        response = json_response(e.body(), e.status)
        response.headers.update(e.headers)
        return response

    @app.errorhandler(HTTPException)
    def http_error(e):
        code = HTTP_CODES.get(e.code, "bad_request" if e.code < 500 else "internal_error")
        message = e.description or e.name
        if e.code == 413:
            message = f"the request body is over the limit of {max_body_bytes} bytes; send a smaller image"
        elif e.code == 405:
            allowed = ", ".join(e.valid_methods or [])
            message = f"{request.method} is not allowed on {_short(request.path)}; use {allowed}"
        elif e.code == 404 and message == NotFound.description:
            message = f"nothing at {_short(request.path)}; see /openapi.json for the API"
        response = json_response(error_body(code, message), e.code)
        for name, value in e.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def internal_error(e):
        rid = request.environ.get("digitdraw.request_id", "")
        log.error_line(e, request.method, request.path, rid)
        return json_response(error_body("internal_error", f"the server failed on this request; quote request id "
                                                          f"{rid} when you report it"), 500)


def _short(path, limit=80):
    """A path to quote back to a client: cut short, so an error never echoes a huge one."""
    return path if len(path) <= limit else path[:limit] + "..."
