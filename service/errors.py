"""The one error type the service answers with: an HTTP status, a snake_case code and a message.

Every error response has the body ``{"error": {"code": ..., "message": ...}}``; the message says
what was wrong and what to send instead.
"""
import json

from flask import Response


def json_response(obj, status=200):
    return Response(json.dumps(obj, separators=(",", ":")), status, mimetype="application/json")


class ApiError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self):
        return {"error": {"code": self.code, "message": self.message}}


def not_ready(holder):
    return ApiError(503, "model_not_ready",
                    f"no verified model is loaded yet from {holder.uri}; retry in a few seconds")
