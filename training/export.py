"""Export a trained model to ONNX for the service, and check that ONNX Runtime agrees with torch.

The file follows the model store contract (service/contract.py): its input and output
names and shapes, dynamic N, one file with the weights inside (no external data). Any
input normalization must live in the model's forward(), so it ends up in the graph.
"""
import copy
import io
import logging
import os
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

from service.contract import INPUT_NAME, INPUT_SHAPE, OUTPUT_NAME
from training.publish import model_signature

# The exporter warns once per torchvision op it cannot register; torchvision is deliberately not installed.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


class ParityError(RuntimeError):
    """ONNX Runtime and torch give different logits for the same batch."""


def _cpu_eval_copy(model):
    # Export a copy so the caller's model keeps its device and train/eval mode (it may be mid-training on a GPU).
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return copy.deepcopy(model).cpu().eval()


def _example():
    # A batch of 2, not 1: the tracer would otherwise be free to specialise N to 1.
    return (torch.rand(2, *INPUT_SHAPE[1:]),)


def _export_dynamo(model):
    program = torch.onnx.export(model, _example(), dynamo=True, external_data=False, verbose=False,
                                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                dynamic_shapes=({0: torch.export.Dim("N")},))
    return program.model_proto.SerializeToString()


def _export_torchscript(model):
    buf = io.BytesIO()
    with warnings.catch_warnings():  # it is deprecated; we only get here when the new exporter failed
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, _example(), buf, dynamo=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}})
    return buf.getvalue()


def export_onnx(model, path=None):
    """Export ``model`` (any nn.Module, or DDP-wrapped) to ONNX bytes meeting the store contract.

    Uses the torch.export-based exporter and falls back to the TorchScript exporter if
    that fails. The result is checked with onnx.checker and against the contract
    (ValueError if it does not meet it). If ``path`` is given the bytes are also written
    there, as one file. The caller's model is not modified.
    """
    model = _cpu_eval_copy(model)
    try:
        onnx_bytes = _export_dynamo(model)
    except Exception as e:  # the dynamo exporter fails in many ways; the fallback is checked the same way below
        print(f"export: torch.export-based ONNX export failed ({type(e).__name__}: {str(e)[:300]}); "
              "falling back to the TorchScript exporter", file=sys.stderr)
        onnx_bytes = _export_torchscript(model)
    onnx.checker.check_model(onnx.load_from_string(onnx_bytes), full_check=True)
    model_signature(onnx_bytes)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(onnx_bytes)
    return onnx_bytes


def check_parity(model, onnx_bytes, batch, atol=1e-4):
    """Run ``batch`` through torch (eval mode, CPU) and ONNX Runtime; return the max abs logit difference.

    Raises ParityError, with the difference, if the outputs differ in shape or by more than
    ``atol`` anywhere (or are not finite). ``batch`` is the contract's input (a float tensor).
    """
    x = batch.detach().to("cpu", torch.float32).contiguous()
    with torch.no_grad():
        expected = _cpu_eval_copy(model)(x).numpy()
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    if got.shape != expected.shape:
        raise ParityError(f"ONNX Runtime returned logits of shape {list(got.shape)}, torch {list(expected.shape)}")
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= atol:  # also catches NaN
        raise ParityError(f"ONNX Runtime and torch disagree on a batch of {len(x)}: max abs logit difference "
                          f"{diff:.3g} > atol {atol:g}; this export must not be published")
    return diff
