"""Scoring a model on labelled digits: the torch model while training, the ONNX file as served.

Digits are uint8 [N, 28, 28] as stored (ink 255); both paths feed the model the contract's
input (service/contract.py: pixel / 255, [N, 1, 28, 28]).
"""
import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from service import contract


@torch.no_grad()
def evaluate(model, images, labels, device, batch_size=1000):
    """(correct, summed cross-entropy, predictions) of a torch model on ``images``."""
    model.eval()
    correct, loss, preds = 0, 0.0, []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(contract.model_input(images[i:i + batch_size])).to(device)
        # np.array copies: Ray hands the arrays over read-only (zero-copy from its object store).
        y = torch.from_numpy(np.array(labels[i:i + batch_size])).to(device).long()
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        p = logits.argmax(1)
        correct += (p == y).sum().item()
        preds.append(p.cpu())
    model.train()
    return correct, loss, torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)


def predict(model, images, batch=1000):
    """The digit an ONNX model (a path or its bytes) reads in each of ``images``, with ONNX
    Runtime, as the service runs it."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = contract.model_input(images)
    return np.concatenate([session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: x[i:i + batch]})[0].argmax(1)
                           for i in range(0, len(x), batch)] or [np.zeros(0, dtype=np.int64)])


def confusion_matrix(labels, preds, classes=contract.CLASSES):
    """[true, predicted] counts."""
    cm = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm
