"""int8 quantization: a model trained here on the bundled digits, exported, quantized and checked."""
import numpy as np
import pytest
import torch

from service.model import Model
from training.data import load_mnist
from training.export import export_onnx
from training.model import build_model
from training.publish import model_signature
from service.contract import model_input
from training.evaluate import predict
from training.quantize import check, quantize_int8, verdict

pytestmark = pytest.mark.slow  # trains a model for about 15 s


@pytest.fixture(scope="module")
def trained():
    """(float ONNX bytes, int8 ONNX bytes, data) for a narrow DigitNet trained here for about
    15 s: about 97% accurate. (Much less trained, at 90%, int8 lost 0.4 points and was refused.)"""
    data = load_mnist("bundled", log=lambda *a: None)
    torch.manual_seed(0)
    model = build_model(width=16)
    x, y = torch.from_numpy(model_input(data.train_x[:6000])), torch.from_numpy(data.train_y[:6000]).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=3 * len(range(0, len(x), 64)))
    model.train()
    for _ in range(3):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
            schedule.step()
    float_bytes = export_onnx(model)
    return float_bytes, quantize_int8(float_bytes, data.train_x), data


def test_int8_model_meets_the_store_contract_in_a_quarter_of_the_size(trained):
    float_bytes, int8_bytes, _ = trained
    assert model_signature(int8_bytes) == model_signature(float_bytes)
    assert len(int8_bytes) < 0.4 * len(float_bytes)
    # The service loads it like any model: float32 [N,1,28,28] in, [N,10] logits out.
    model = Model(int8_bytes, {"version": "int8"})
    logits = model.logits(np.zeros((3, 1, 28, 28), np.float32))
    assert logits.shape == (3, 10) and logits.dtype == np.float32


def test_int8_model_reads_the_same_digits_as_the_float_one(trained):
    float_bytes, int8_bytes, data = trained
    result = check(float_bytes, int8_bytes, data.val_x, data.val_y)
    assert result["float_accuracy"] > 0.95, result  # a real model, so the comparison means something
    assert result["passed"], result
    assert result["agreement"] >= 0.99 and result["int8_accuracy"] >= result["float_accuracy"] - 0.002
    assert result["count"] == len(data.val_y)


def test_check_refuses_an_int8_model_that_reads_differently(trained):
    float_bytes, _, data = trained
    # The int8 version of an untrained model stands in for a quantization gone wrong.
    torch.manual_seed(1)
    other = quantize_int8(export_onnx(build_model(width=8)), data.train_x)
    assert (predict(other, data.val_x[:200]) != predict(float_bytes, data.val_x[:200])).any()
    result = check(float_bytes, other, data.val_x, data.val_y)
    assert not result["passed"]
    assert "less accurate than float" in result["reason"]


def test_the_bounds_are_inclusive_and_counted_in_digits():
    # 0.958 - 0.956 is 0.0020000000000000018 in floating point: a drop of exactly 2 digits
    # in 1,000 was once refused.
    assert verdict(958, 956, 995, 1000) is None
    assert "less accurate than float" in verdict(958, 955, 995, 1000)
    assert verdict(958, 958, 990, 1000) is None
    assert "agree on only 0.9890" in verdict(958, 958, 989, 1000)
