"""Quantize the exported float model to int8 for serving, and check it before it replaces the float one.

The service answers one image per request on one CPU thread, and inference is a fifth of
its CPU time. ONNX Runtime's static int8 quantization (onnxruntime.quantization) runs this
model in about 0.65x the float model's time here, in a file a quarter the size:

- weights int8 per output channel, activations uint8 with ranges calibrated on training
  digits; QOperator format (QLinearConv and friends), which ORT runs directly;
- reduce_range (7-bit weights): CPUs with AVX2 but no VNNI, which GKE's e2 machines may
  be, multiply uint8 by int8 with an instruction that saturates on full-range weights.

The input and output stay the store contract's float32 tensors, so the service is
unchanged. ``check`` compares the two models on held-out digits; the caller publishes the
int8 model only if it passes, and the float one otherwise.
"""
import logging
import os
import tempfile

import numpy as np

from service.contract import INPUT_NAME, model_input
from training.evaluate import predict
from training.publish import model_signature

CALIBRATION_IMAGES = 512  # training digits whose activations set the uint8 ranges
MAX_ACCURACY_DROP = 0.002  # of validation accuracy, int8 below float: 2 digits in 1,000
MIN_AGREEMENT = 0.99       # share of validation digits on which int8 and float give the same digit


def quantize_int8(onnx_bytes, calibration):
    """The int8 version of float ``onnx_bytes``, calibrated on the first CALIBRATION_IMAGES
    of ``calibration`` (uint8 digits [N,28,28]). Raises ValueError if the result does not
    meet the store contract."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    x = model_input(calibration[:CALIBRATION_IMAGES])
    batches = [x[i:i + 64] for i in range(0, len(x), 64)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    # quantize_static reads and writes files only.
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        with open(src, "wb") as f:
            f.write(onnx_bytes)
        # It warns, on the root logger, that pre-processing (shape inference and graph
        # optimization) is recommended; for this model it changed neither speed nor accuracy.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_static(src, dst, Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        with open(dst, "rb") as f:
            int8_bytes = f.read()
    model_signature(int8_bytes)
    return int8_bytes


def check(float_bytes, int8_bytes, images, labels):
    """Compare the models on held-out digits ``images`` (uint8 [N,28,28]) with ``labels``.

    Returns {"float_accuracy", "int8_accuracy", "int8_correct", "agreement", "count",
    "passed", "reason"}: see ``verdict``.
    """
    y = np.asarray(labels)
    p_float, p_int8 = predict(float_bytes, images), predict(int8_bytes, images)
    float_correct, int8_correct = int((p_float == y).sum()), int((p_int8 == y).sum())
    same = int((p_float == p_int8).sum())
    reason = verdict(float_correct, int8_correct, same, len(y))
    return {"float_accuracy": float_correct / len(y), "int8_accuracy": int8_correct / len(y),
            "int8_correct": int8_correct, "agreement": same / len(y), "count": len(y), "passed": reason is None,
            "reason": reason or f"within {MAX_ACCURACY_DROP} accuracy and {MIN_AGREEMENT} agreement of float"}


def verdict(float_correct, int8_correct, same, count):
    """None if int8 passes, else why not: it may read at most MAX_ACCURACY_DROP * count fewer
    of the ``count`` digits right than float, and must give the same digit as float on at
    least MIN_AGREEMENT of them (``same``). Counted in digits, so a drop of exactly the
    bound (2 in 1,000) passes, as documented."""
    if float_correct - int8_correct > MAX_ACCURACY_DROP * count:
        return (f"int8 is {(float_correct - int8_correct) / count:.4f} less accurate than float on {count} "
                f"validation digits (at most {MAX_ACCURACY_DROP} allowed)")
    if same < MIN_AGREEMENT * count:
        return (f"int8 and float agree on only {same / count:.4f} of {count} validation digits "
                f"(at least {MIN_AGREEMENT} needed)")
    return None
