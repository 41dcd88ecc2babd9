"""The Open Inference Protocol v2 (REST), so KServe and Triton clients work unchanged.

The model is called ``digitdraw``. /infer takes the model's own input (service/contract.py:
an FP32 tensor, already preprocessed, ink 1.0 and background 0.0) and returns up to two
outputs: the logits and the probabilities, each named at most once in ``outputs``.

The input comes as JSON ``data`` (flat or nested), or as binary data after the JSON, as the
binary tensor data extension defines it (KServe's and Triton's clients send that by default):
the ``Inference-Header-Content-Length`` header gives the JSON's length, the input's
``parameters.binary_data_size`` the bytes that follow it (little-endian float32, row major).
An output is sent as binary data when its ``parameters.binary_data`` is true, or when the
request's ``parameters.binary_data_output`` is and the output does not say otherwise; the
reply then carries its own ``Inference-Header-Content-Length`` and is
application/octet-stream. Errors use the service's JSON error body.
"""
import json
import time

import numpy as np
from flask import Response, request

from . import contract, payload
from .errors import ApiError, json_response, loaded_model
from .model import softmax
from .wsgi import MODEL_VERSION

NAME = "digitdraw"
PROBABILITIES = "probabilities"
HEADER_LENGTH = "Inference-Header-Content-Length"
# What a request's body may be declared as: the JSON alone, or the JSON and binary data.
# Triton's own client sends no Content-Type at all.
BODY_TYPES = ("", "application/json", "application/octet-stream")
FLOAT32 = np.dtype("<f4")


def register(app, holder, max_batch):
    @app.get("/v2")
    def v2_server():
        return json_response({"name": NAME, "version": "1", "extensions": ["binary_tensor_data"]})

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
        body, binary = _read(request)
        x = _input_tensor(body, binary, model.input_name, max_batch)
        wanted = _requested_outputs(body, [model.output_name, PROBABILITIES])
        started = time.perf_counter()
        logits = model.logits(x)
        app.metrics.observe_inference(time.perf_counter() - started, model.version)
        request.environ[MODEL_VERSION] = model.version
        values = {model.output_name: logits}
        if PROBABILITIES in wanted:
            values[PROBABILITIES] = softmax32(logits)
        outputs, tails = [], []
        for name, as_binary in wanted.items():
            value = values[name]
            output = {"name": name, "datatype": "FP32", "shape": list(value.shape)}
            if as_binary:
                tails.append(value.astype(FLOAT32, copy=False).tobytes())
                output["parameters"] = {"binary_data_size": len(tails[-1])}
            else:
                output["data"] = value.ravel().tolist()
            outputs.append(output)
        reply = {"model_name": NAME, "model_version": model.version, "outputs": outputs}
        if isinstance(body.get("id"), str):
            reply["id"] = body["id"]
        if not tails:
            return json_response(reply)
        head = json.dumps(reply, separators=(",", ":")).encode()
        return Response(b"".join([head, *tails]), 200, mimetype="application/octet-stream",
                        headers={HEADER_LENGTH: str(len(head))})

    @app.get("/v2/models/<name>")
    @app.get("/v2/models/<name>/ready")
    @app.post("/v2/models/<name>/infer")
    def v2_unknown_model(name):
        raise ApiError("not_found", f"no model {name[:64]!r} here; this server serves {NAME!r}")


def softmax32(logits):
    return softmax(logits.astype(np.float64)).astype(np.float32)


def _read(req):
    """(the inference request's JSON object, the binary data after it: b"" if none)."""
    if req.headers.get("Content-Encoding", "identity").lower() != "identity":
        raise ApiError("unsupported_media_type", "compressed inference requests are not accepted; send the body "
                                                 "without Content-Encoding")
    if req.mimetype not in BODY_TYPES:
        raise ApiError("unsupported_media_type",
                       f"Content-Type {req.mimetype!r} is not accepted; send application/json, or the JSON and "
                       f"binary tensor data as application/octet-stream (images go to POST /predict)")
    raw = req.get_data(cache=False)
    length = req.headers.get(HEADER_LENGTH)
    if length is None:
        head, binary = raw, b""
    else:
        if not length.isdigit() or not 0 < int(length) <= len(raw):
            raise ApiError("invalid_header", f"{HEADER_LENGTH} must be the length in bytes of the JSON at the start "
                                             f"of the body (1 to {len(raw)}), not {length[:40]!r}")
        head, binary = raw[:int(length)], raw[int(length):]
    body = payload.load_json(head, "send {\"inputs\": [...]}")
    if not isinstance(body, dict):
        raise ApiError("invalid_json", "the inference request must be a JSON object with 'inputs'")
    return body, binary


def _input_tensor(body, binary, input_name, max_batch):
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
    needed = int(np.prod(shape))
    parameters = _parameters(t, "the input's")
    if "binary_data_size" in parameters:
        x = _binary_input(parameters["binary_data_size"], binary, needed, "data" in t)
    elif binary:
        raise ApiError("invalid_tensor", f"{len(binary)} bytes follow the JSON but the input has no "
                                         "parameters.binary_data_size; give it, or send the data as JSON")
    else:
        x = _json_input(t.get("data"), needed, shape)
    if not np.isfinite(x).all():
        raise ApiError("invalid_tensor", "the input holds NaN or infinite values")
    return x.reshape(shape)


def _parameters(obj, whose):
    parameters = obj.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ApiError("invalid_tensor", f"{whose} 'parameters' must be a JSON object")
    return parameters


def _binary_input(size, binary, needed, has_data):
    if has_data:
        raise ApiError("invalid_tensor", "the input has both 'data' and parameters.binary_data_size; send one")
    if type(size) is not int or size != needed * FLOAT32.itemsize:
        raise ApiError("invalid_tensor", f"parameters.binary_data_size is {json.dumps(size)[:40]}; the shape "
                                         f"needs {needed * FLOAT32.itemsize} bytes of FP32")
    if len(binary) != size:
        raise ApiError("invalid_tensor", f"{len(binary)} bytes follow the JSON, not the {size} of "
                                         "parameters.binary_data_size; check Inference-Header-Content-Length")
    return np.frombuffer(binary, FLOAT32)


def _json_input(data, needed, shape):
    if not isinstance(data, list) or not _numbers_only(data):
        raise ApiError("invalid_tensor", "'data' must be an array (flat or nested) of JSON numbers; strings, "
                                         "booleans and nulls are not FP32 values")
    try:
        with np.errstate(all="ignore"):  # out-of-range values become inf and are refused later
            x = np.asarray(data, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as e:
        raise ApiError("invalid_tensor", f"'data' is not an array of FP32 numbers ({str(e)[:120]})") from None
    if x.size != needed:
        raise ApiError("invalid_tensor", f"'data' holds {x.size} numbers; shape {shape} needs {needed}")
    return x


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
    """{output name: whether to send it as binary data}, in the order asked for; every
    output when ``outputs`` is absent. Each name may be asked for once."""
    every_binary = bool(_flag(_parameters(body, "the request's"), "binary_data_output"))
    requested = body.get("outputs")
    if requested is None:
        return {name: every_binary for name in names}
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise ApiError("invalid_tensor", "'outputs' must be a list of {\"name\": ...} objects")
    wanted = {}
    for o in requested:
        name = o.get("name")
        if name not in names:
            raise ApiError("invalid_tensor", f"unknown output {str(name)[:64]!r}; the model has {names}")
        if name in wanted:
            raise ApiError("invalid_tensor", f"output {name!r} is asked for twice; name each output once")
        parameters = _parameters(o, f"output {name!r}'s")
        for unsupported in ("classification", "shared_memory_region"):
            if unsupported in parameters:
                raise ApiError("invalid_tensor", f"output parameter {unsupported!r} is not supported here")
        binary = _flag(parameters, "binary_data")
        wanted[name] = every_binary if binary is None else binary
    return wanted


def _flag(parameters, name):
    value = parameters.get(name)
    if value is not None and not isinstance(value, bool):
        raise ApiError("invalid_tensor", f"parameter {name!r} must be true or false")
    return value
