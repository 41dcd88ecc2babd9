"""The operator's endpoints: liveness, readiness, the loaded model, metrics, the API document."""
import os

from flask import Response

from .errors import json_response, loaded_model

OPENAPI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi.json")
# What /model tells anyone: enough to know which model answers and how good it is. The rest
# of model.json (the training config, run and code revision) is for the registry and the logs.
PUBLIC_META = ("version", "created_at", "sha256", "size_bytes", "input", "output", "metrics", "data_source")


def register(app, holder, feedback_on):
    with open(OPENAPI, "rb") as f:
        openapi_doc = f.read()

    @app.get("/healthz")
    def healthz():
        return json_response({"status": "alive"})

    @app.get("/readyz")
    def readyz():
        model = loaded_model(holder)
        return json_response({"status": "ready", "model_version": model.version, "mode": holder.mode,
                              "feedback": feedback_on})

    @app.get("/model")
    def model_info():
        meta = loaded_model(holder).meta
        public = {k: meta[k] for k in PUBLIC_META if k in meta}
        public["quantization"] = meta.get("quantization", {}).get("scheme", "none")
        return json_response({**public, "mode": holder.mode})

    @app.get("/metrics")
    def metrics():
        return Response(app.metrics.render(holder.mode), mimetype="text/plain; version=0.0.4")

    @app.get("/openapi.json")
    def openapi_json():
        return Response(openapi_doc, mimetype="application/json")
