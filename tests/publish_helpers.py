"""Helpers for tests/test_publish.py, and a publisher process the tests start and kill.

The models are real ONNX graphs built with onnx.helper (flatten, matmul, add), so the
publish tests need no torch; ``tag`` goes into the model's doc string to give each
publisher different bytes, hence a different sha256 and version. ``tiny_onnx(tag, acc)``
reads exactly ``acc`` of GATE_SET right (to the nearest of its GATE_COUNT digits), so the
real promotion gate, ``gate()``, judges them by what they read.

As a script: ``python tests/publish_helpers.py STORE ACC TAG [--barrier DIR N] [--crash-at TEXT]``
publishes one model and prints the result as JSON on its last line. ``--barrier`` makes the
N publisher processes wait for each other right before their first LATEST swap, so they
all read the same LATEST and race for it. ``--crash-at`` SIGKILLs the process at the
first log line containing TEXT, a real crash at that step of publish().
"""
import argparse
import json
import os
import signal
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


GATE_COUNT = 500  # one digit per pixel: digit i has ink only at pixel i, and its label is i % 10


def gate_set():
    """(images uint8 [GATE_COUNT, 28, 28], labels): the promotion gate's set for tiny models."""
    x = np.zeros((GATE_COUNT, 28 * 28), np.uint8)
    x[np.arange(GATE_COUNT), np.arange(GATE_COUNT)] = 255
    return x.reshape(-1, 28, 28), np.arange(GATE_COUNT) % 10


def gate(margin=0.002, digit_margin=0.05, log=lambda line: None):
    """The real promotion gate (training/champion.py) on gate_set() as MNIST validation."""
    from training.champion import Gate

    return Gate({"mnist_val": gate_set()}, margin, digit_margin, log=log)


def tiny_onnx(tag="", acc=1.0, input_name="image", batch="N", wrong=None):
    """A valid ONNX model meeting the store contract (unless the arguments say otherwise)
    that reads round(acc x GATE_COUNT) digits of gate_set() right: the wrong ones are the
    first, one a digit in turn, so that no digit loses more than its share. ``wrong``, a
    set of indices of gate_set(), names the ones it reads wrong instead."""
    weight = np.zeros((784, 10), np.float32)
    wrong = set(range(GATE_COUNT - round(acc * GATE_COUNT))) if wrong is None else set(wrong)
    for i in range(GATE_COUNT):
        weight[i, (i + (i in wrong)) % 10] = 1.0
    weight = numpy_helper.from_array(weight, "weight")
    bias = numpy_helper.from_array(np.zeros(10, np.float32), "bias")
    graph = helper.make_graph(
        [helper.make_node("Flatten", [input_name], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "weight"], ["mm"]),
         helper.make_node("Add", ["mm", "bias"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        initializer=[weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], doc_string=tag)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def meta_for(acc, **extra):
    return {"metrics": {"val_accuracy": acc}, "data": "test", **extra}


def overwrite(uri, key, data):
    """Replace an object in a store behind the store's back (to simulate corruption)."""
    if uri.startswith("gs://"):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        bucket, _, prefix = uri[len("gs://"):].partition("/")
        client = storage.Client(project="local", credentials=AnonymousCredentials())
        client.bucket(bucket).blob(f"{prefix}/{key}" if prefix else key).upload_from_string(data)
    else:
        with open(os.path.join(uri, *key.split("/")), "wb") as f:
            f.write(data)


def file_barrier(directory, name, n, timeout=60):
    """Wait until ``n`` processes have called this with the same ``directory``."""
    os.makedirs(directory, exist_ok=True)
    open(os.path.join(directory, name), "w").close()
    deadline = time.monotonic() + timeout
    while len(os.listdir(directory)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"barrier {directory}: only {len(os.listdir(directory))} of {n} arrived")
        time.sleep(0.01)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("acc", type=float)
    parser.add_argument("tag")
    parser.add_argument("--barrier", nargs=2, metavar=("DIR", "N"))
    parser.add_argument("--crash-at")
    args = parser.parse_args()

    sys.path.insert(0, ROOT)
    from training.publish import publish

    waited = False

    def log(line):
        nonlocal waited
        print(line, flush=True)
        if args.crash_at and args.crash_at in line:
            os.kill(os.getpid(), signal.SIGKILL)
        if args.barrier and "moving LATEST" in line and not waited:
            waited = True
            file_barrier(args.barrier[0], args.tag, int(args.barrier[1]))

    result = publish(tiny_onnx(args.tag, args.acc), meta_for(args.acc), [args.store], gate(), log=log)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
