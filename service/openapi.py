"""The OpenAPI 3.1 document for the whole HTTP API, served at /openapi.json.

tests/test_service_openapi.py keeps it true: every Flask route is documented here and
every path here is a route, and the responses the contract tests get validate against
these schemas.
"""

ERROR_CODES = ["invalid_json", "missing_field", "invalid_field", "invalid_base64", "not_an_image",
               "invalid_tensor", "bad_request", "body_too_large", "image_too_large", "too_many_images",
               "unsupported_media_type", "unsupported_image_format", "empty_canvas", "model_not_ready",
               "method_not_allowed", "not_found", "internal_error"]

SCHEMAS = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {
            "type": "object", "required": ["code", "message"], "additionalProperties": False,
            "properties": {"code": {"type": "string", "enum": ERROR_CODES},
                           "message": {"type": "string", "minLength": 1}}}},
    },
    "ImageString": {
        "type": "string", "minLength": 1,
        "description": "a data URL (data:image/png;base64,...) or bare base64 of a PNG or JPEG"},
    "PredictRequest": {
        "oneOf": [
            {"type": "object", "required": ["image"], "additionalProperties": False,
             "properties": {"image": {"$ref": "#/components/schemas/ImageString"},
                            "preview": {"type": "boolean", "default": False}}},
            {"type": "object", "required": ["images"], "additionalProperties": False,
             "properties": {"images": {"type": "array", "minItems": 1, "maxItems": 64,
                                       "items": {"$ref": "#/components/schemas/ImageString"}},
                            "preview": {"type": "boolean", "default": False}}},
        ]},
    "Prediction": {
        "type": "object", "additionalProperties": False,
        "required": ["digit", "confidence", "probabilities", "model_version"],
        "properties": {
            "digit": {"type": "integer", "minimum": 0, "maximum": 9},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "probabilities": {"type": "array", "minItems": 10, "maxItems": 10,
                              "items": {"type": "number", "minimum": 0, "maximum": 1},
                              "description": "for digits 0..9; they sum to 1"},
            "model_version": {"type": "string"},
            "preview": {"type": "string", "pattern": "^data:image/png;base64,",
                        "description": "with preview=true: the 28x28 input the model saw, white ink on black"}}},
    "BatchPrediction": {
        "type": "object", "additionalProperties": False, "required": ["predictions", "model_version"],
        "properties": {"predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}},
                       "model_version": {"type": "string"}}},
    "Alive": {"type": "object", "required": ["status"], "additionalProperties": False,
              "properties": {"status": {"const": "alive"}}},
    "Ready": {"type": "object", "required": ["status", "model_version"], "additionalProperties": False,
              "properties": {"status": {"const": "ready"}, "model_version": {"type": "string"}}},
    "ModelMeta": {
        "type": "object", "required": ["version", "sha256"], "additionalProperties": True,
        "description": "the loaded model's model.json as published by training",
        "properties": {"version": {"type": "string"}, "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                       "created_at": {"type": "string"}, "metrics": {"type": "object"}}},
    "V2Server": {"type": "object", "required": ["name", "version", "extensions"], "additionalProperties": False,
                 "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                "extensions": {"type": "array", "items": {"type": "string"}}}},
    "V2Live": {"type": "object", "required": ["live"], "additionalProperties": False,
               "properties": {"live": {"type": "boolean"}}},
    "V2Ready": {"type": "object", "required": ["ready"], "additionalProperties": False,
                "properties": {"ready": {"type": "boolean"}}},
    "V2ModelReady": {"type": "object", "required": ["name", "ready"], "additionalProperties": False,
                     "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}},
    "V2TensorMetadata": {"type": "object", "required": ["name", "datatype", "shape"], "additionalProperties": False,
                         "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                                        "shape": {"type": "array", "items": {"type": "integer"}}}},
    "V2ModelMetadata": {
        "type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
        "additionalProperties": False,
        "properties": {"name": {"const": "digitdraw"}, "versions": {"type": "array", "items": {"type": "string"}},
                       "platform": {"type": "string"},
                       "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2TensorMetadata"}},
                       "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2TensorMetadata"}}}},
    "V2InferRequest": {
        "type": "object", "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                "type": "object", "required": ["name", "shape", "datatype", "data"],
                "properties": {"name": {"type": "string", "description": "the model's input name (GET /v2/models/digitdraw)"},
                               "shape": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4,
                                         "description": "[N, 1, 28, 28]"},
                               "datatype": {"const": "FP32"},
                               "data": {"type": "array", "description": "N*784 numbers, flat or nested, row-major; "
                                                                        "ink 1.0, background 0.0"}}}},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                                   "properties": {"name": {"type": "string"}}}}}},
    "V2InferResponse": {
        "type": "object", "required": ["model_name", "outputs"], "additionalProperties": False,
        "properties": {
            "model_name": {"const": "digitdraw"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name", "shape", "datatype", "data"], "additionalProperties": False,
                "properties": {"name": {"type": "string"}, "datatype": {"const": "FP32"},
                               "shape": {"type": "array", "items": {"type": "integer"}},
                               "data": {"type": "array", "items": {"type": "number"}}}}}}},
}


def _json(schema):
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _ok(schema, description="OK"):
    return {"description": description, **_json(schema)}


def _errors(*statuses):
    text = {400: "malformed request", 404: "not found", 405: "wrong method", 413: "body, image or batch too large",
            415: "unsupported content type or image format", 422: "empty canvas (no ink)",
            503: "no verified model loaded yet"}
    return {str(s): {"description": text[s], **_json("Error")} for s in statuses}


def _get(summary, responses):
    return {"get": {"summary": summary, "responses": {**responses, **_errors(405)}}}


PREDICT_ERRORS = _errors(400, 405, 413, 415, 422, 503)

PATHS = {
    "/predict": {"post": {
        "summary": "Read the digit(s) in a canvas image (or a batch of them)",
        "parameters": [{"name": "preview", "in": "query", "required": False, "schema": {"type": "boolean"},
                        "description": "for raw image bodies: also return the 28x28 preview"}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
            "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                "image": {"type": "string", "contentMediaType": "application/octet-stream"},
                "preview": {"type": "string", "enum": ["true", "false", "1", "0"]}}}},
            "image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}},
            "image/jpeg": {"schema": {"type": "string", "contentMediaType": "image/jpeg"}}}},
        "responses": {"200": {"description": "the prediction; a batch request gets BatchPrediction",
                              "content": {"application/json": {"schema": {"oneOf": [
                                  {"$ref": "#/components/schemas/Prediction"},
                                  {"$ref": "#/components/schemas/BatchPrediction"}]}}}},
                      **PREDICT_ERRORS}}},
    "/healthz": _get("Liveness: 200 while the process runs", {"200": _ok("Alive")}),
    "/readyz": _get("Readiness: 200 only while a verified model is loaded",
                    {"200": _ok("Ready"), **_errors(503)}),
    "/model": _get("The loaded model's model.json", {"200": _ok("ModelMeta"), **_errors(503)}),
    "/metrics": _get("Prometheus metrics (text exposition format 0.0.4)", {"200": {
        "description": "requests by route and status, latency and inference-time histograms, model version",
        "content": {"text/plain": {"schema": {"type": "string"}}}}}),
    "/openapi.json": _get("This document", {"200": {"description": "OpenAPI 3.1",
                                                    "content": {"application/json": {"schema": {"type": "object"}}}}}),
    "/": _get("The frontend (index.html)", {"200": {"description": "HTML",
                                                    "content": {"text/html": {"schema": {"type": "string"}}}},
                                            **_errors(404)}),
    "/{filename}": {"get": {
        "summary": "The frontend's static files",
        "parameters": [{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "the file"}, "304": {"description": "not modified"},
                      **_errors(404, 405)}}},
    "/v2": _get("OIP server metadata", {"200": _ok("V2Server")}),
    "/v2/health/live": _get("OIP liveness", {"200": _ok("V2Live")}),
    "/v2/health/ready": _get("OIP readiness", {"200": _ok("V2Ready"), **_errors(503)}),
    "/v2/models/digitdraw": _get("OIP model metadata", {"200": _ok("V2ModelMetadata"), **_errors(503)}),
    "/v2/models/digitdraw/ready": _get("OIP model readiness", {"200": _ok("V2ModelReady"), **_errors(503)}),
    "/v2/models/digitdraw/infer": {"post": {
        "summary": "OIP inference: FP32 [N,1,28,28] in, logits and probabilities [N,10] out",
        "requestBody": {"required": True, **_json("V2InferRequest")},
        "responses": {"200": _ok("V2InferResponse"), **_errors(400, 405, 413, 415, 503)}}},
}


def document():
    return {
        "openapi": "3.1.0",
        "info": {"title": "DigitDraw prediction service", "version": "1",
                 "description": "Draw a digit, see what the network reads. Every error is JSON: "
                                "{\"error\": {\"code\": ..., \"message\": ...}}."},
        "paths": PATHS,
        "components": {"schemas": SCHEMAS},
    }
