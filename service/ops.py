"""The operator's endpoints: liveness, readiness, the loaded model, metrics, the API document."""
import os

from flask import Response

from .errors import json_response, not_ready

OPENAPI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi.json")


def register(app, holder):
    with open(OPENAPI, "rb") as f:
        openapi_doc = f.read()

    @app.get("/healthz")
    def healthz():
        return json_response({"status": "alive"})

    @app.get("/readyz")
    def readyz():
        model = holder.current
        if model is None:
            raise not_ready()
        return json_response({"status": "ready", "model_version": model.version})

    @app.get("/model")
    def model_info():
        model = holder.current
        if model is None:
            raise not_ready()
        return json_response(model.meta)

    @app.get("/metrics")
    def metrics():
        return Response(app.metrics.render(), mimetype="text/plain; version=0.0.4")

    @app.get("/openapi.json")
    def openapi_json():
        return Response(openapi_doc, mimetype="application/json")
