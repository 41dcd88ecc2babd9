"""The Open Inference Protocol v2 (REST), so KServe clients and tools work unchanged.

The model is called ``digitdraw``. /infer takes the model's own input (service/contract.py:
an FP32 tensor, already preprocessed, ink 1.0 and background 0.0) as JSON data, flat or
nested, and returns two outputs: the logits and the probabilities. The binary tensor
extension is not supported. Errors use the service's JSON error body.
"""
import time

import numpy as np
from flask import request

from . import contract, payload
from .errors import ApiError, json_response, loaded_model
from .model import softmax
from .wsgi import MODEL_VERSION

NAME = "digitdraw"
PROBABILITIES = "probabilities"


def register(app, holder, max_batch):
    @app.get("/v2")
    def v2_server():
        return json_response({"name": NAME, "version": "1", "extensions": []})

    @app.get("/v2/health/live")
    def v2_live():
        return json_response({"live": True})

    @app.get("/v2/health/ready")
    def v2_ready():
        loaded_model(holder)
        return json_response({"ready": True})

    @app.get(f"/v2/models/{NAME}/ready")
    def v2_model_ready():
        loaded_model(holder)
        return json_response({"name": NAME, "ready": True})

    @app.get(f"/v2/models/{NAME}")
    def v2_model():
        model = loaded_model(holder)
        return json_response({
            "name": NAME, "versions": [model.version], "platform": "onnxruntime_onnx",
            "inputs": [{"name": model.input_name, "datatype": "FP32", "shape": [-1, *contract.INPUT_SHAPE[1:]]}],
            "outputs": [{"name": model.output_name, "datatype": "FP32", "shape": [-1, *contract.OUTPUT_SHAPE[1:]]},
                        {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, *contract.OUTPUT_SHAPE[1:]]}]})

    @app.post(f"/v2/models/{NAME}/infer")
    def v2_infer():
        model = loaded_model(holder)
        if request.headers.get("Inference-Header-Content-Length") or request.mimetype != "application/json":
            raise ApiError("unsupported_media_type",
                           "send the inference request as application/json; the binary tensor extension "
                           "is not supported")
        body = payload.load_json(request.get_data(cache=False), "send {\"inputs\": [...]}")
        if not isinstance(body, dict):
            raise ApiError("invalid_json", "the body must be a JSON object with 'inputs'")
        x = _input_tensor(body, model.input_name, max_batch)
        wanted = _requested_outputs(body, [model.output_name, PROBABILITIES])
        started = time.perf_counter()
        logits = model.logits(x)
        app.metrics.observe_inference(time.perf_counter() - started, model.version)
        request.environ[MODEL_VERSION] = model.version
        values = {model.output_name: logits,
                  PROBABILITIES: softmax32(logits)}
        response = {"model_name": NAME, "model_version": model.version,
                    "outputs": [{"name": name, "datatype": "FP32", "shape": list(values[name].shape),
                                 "data": values[name].ravel().tolist()} for name in wanted]}
        if isinstance(body.get("id"), str):
            response["id"] = body["id"]
        return json_response(response)


    @app.get("/v2/models/<name>")
    @app.get("/v2/models/<name>/ready")
    @app.post("/v2/models/<name>/infer")
    def v2_unknown_model(name):
        raise ApiError("not_found", f"no model {name[:64]!r} here; this server serves {NAME!r}")


def softmax32(logits):
    return softmax(logits.astype(np.float64)).astype(np.float32)


def _input_tensor(body, input_name, max_batch):
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError("invalid_tensor", f"'inputs' must be a list of one tensor named {input_name!r}")
    t = inputs[0]
    if t.get("name") != input_name:
        raise ApiError("invalid_tensor", f"unknown input {t.get('name')!r}; the model's input is {input_name!r}")
    if t.get("datatype") != "FP32":
        raise ApiError("invalid_tensor", f"datatype {t.get('datatype')!r} is not supported; send FP32")
    shape = t.get("shape")
    if (not isinstance(shape, list) or len(shape) != 4 or not all(type(d) is int for d in shape)
            or shape[1:] != contract.INPUT_SHAPE[1:] or shape[0] < 1):
        raise ApiError("invalid_tensor", f"shape {shape!r} is not {contract.INPUT_SHAPE} with N >= 1")
    if shape[0] > max_batch:
        raise ApiError("too_many_images", f"a batch of {shape[0]}; send at most {max_batch}")
    data = t.get("data")
    if not isinstance(data, list) or not _numbers_only(data):
        raise ApiError("invalid_tensor", "'data' must be an array (flat or nested) of JSON numbers; strings, "
                                         "booleans and nulls are not FP32 values")
    try:
        with np.errstate(all="ignore"):  # out-of-range values become inf and are refused below
            x = np.asarray(data, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as e:
        raise ApiError("invalid_tensor", f"'data' is not an array of FP32 numbers ({str(e)[:120]})") from None
    needed = int(np.prod(shape))
    if x.size != needed:
        raise ApiError("invalid_tensor", f"'data' holds {x.size} numbers; shape {shape} needs {needed}")
    if not np.isfinite(x).all():
        raise ApiError("invalid_tensor", "'data' holds NaN or infinite values")
    return x.reshape(shape)


def _numbers_only(data):
    """Whether nested lists ``data`` hold only ints and floats (no bool, str or None)."""
    todo = [data]
    while todo:
        items = todo.pop()
        kinds = set(map(type, items))
        if list in kinds:
            todo += [v for v in items if type(v) is list]
            kinds.discard(list)
        if not kinds <= {int, float}:
            return False
    return True


def _requested_outputs(body, names):
    requested = body.get("outputs")
    if requested is None:
        return names
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise ApiError("invalid_tensor", "'outputs' must be a list of {\"name\": ...} objects")
    wanted = [o.get("name") for o in requested]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ApiError("invalid_tensor", f"unknown outputs {unknown}; the model has {names}")
    return wanted
