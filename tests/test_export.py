"""ONNX export: one self-contained file meeting the store contract, and ONNX Runtime agreeing with torch."""
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from training.export import ParityError, _export_torchscript, check_parity, export_onnx
from training.model import build_model
from training.publish import model_signature

pytestmark = pytest.mark.slow  # exports with torch.onnx


class TinyNet(nn.Module):
    """A small CNN with the layers that matter for export: conv, BatchNorm, pooling, dropout, linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 14 * 14, 10))

    def forward(self, x):
        return self.head(self.features((x - 0.1307) / 0.3081))


def trained_like(model, seed=0):
    """Random weights and BatchNorm statistics, so eval-mode BatchNorm does real work."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
    return model.train()  # as it comes out of a training loop


def digits(n, seed=1):
    """A batch shaped like canvas input: pixel/255 in [0, 1], mostly background."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) > 0.8).float() * torch.rand(n, 1, 28, 28, generator=g)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    model = trained_like(TinyNet())
    onnx_bytes = export_onnx(model, out / "model.onnx")
    return model, onnx_bytes, out


def test_export_is_one_file_with_the_contract_names_and_shapes(tiny):
    model, onnx_bytes, out = tiny
    assert [p.name for p in out.iterdir()] == ["model.onnx"]  # no external data files beside it
    assert (out / "model.onnx").read_bytes() == onnx_bytes
    proto = onnx.load_from_string(onnx_bytes)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    onnx.checker.check_model(proto, full_check=True)

    (inp,), (outp,) = proto.graph.input, proto.graph.output
    assert inp.name == "image" and outp.name == "logits"
    assert inp.type.tensor_type.elem_type == outp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims, out_dims = inp.type.tensor_type.shape.dim, outp.type.tensor_type.shape.dim
    assert [d.dim_value for d in in_dims[1:]] == [1, 28, 28] and [d.dim_value for d in out_dims[1:]] == [10]
    assert in_dims[0].dim_param and not in_dims[0].HasField("dim_value")  # dynamic N
    assert model_signature(onnx_bytes)["input"]["shape"] == ["N", 1, 28, 28]


@pytest.mark.parametrize("n", [1, 7, 64])
def test_onnx_runtime_matches_torch_at_any_batch_size(tiny, n):
    model, onnx_bytes, _ = tiny
    batch = digits(n)
    diff = check_parity(model, onnx_bytes, batch)
    assert 0 <= diff <= 1e-4
    logits = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"]).run(None, {"image": batch.numpy()})
    assert logits[0].shape == (n, 10)
    with torch.no_grad():
        expected = model.eval()(batch)
    model.train()
    # Eval mode was exported: dropout off, BatchNorm from running statistics.
    assert torch.allclose(torch.from_numpy(logits[0]), expected, atol=1e-4)


def test_export_leaves_the_callers_model_alone(tiny):
    model, _, _ = tiny
    assert model.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_parity_failure_names_the_difference(tiny):
    _, onnx_bytes, _ = tiny
    other = trained_like(TinyNet(), seed=5)
    with pytest.raises(ParityError, match=r"max abs logit difference [0-9.e+-]+ > atol 0.0001"):
        check_parity(other, onnx_bytes, digits(4))


def test_torchscript_fallback_meets_the_same_contract(tiny):
    model, _, _ = tiny
    onnx_bytes = _export_torchscript(model.eval())
    model.train()
    model_signature(onnx_bytes)
    for n in (1, 7):
        assert check_parity(model, onnx_bytes, digits(n)) <= 1e-4


def test_project_model_exports_with_parity(capfd):
    model = trained_like(build_model(width=8))
    onnx_bytes = export_onnx(model)
    assert "falling back" not in capfd.readouterr().err  # the torch.export-based exporter handles it
    model_signature(onnx_bytes)
    for n in (1, 7):
        check_parity(model, onnx_bytes, digits(n, seed=n))
