"""The Open Inference Protocol as real clients speak it: Triton's own Python client
(tritonclient[http]) against a real `python -m service`, with its defaults (inputs and
outputs as binary tensor data) and with JSON tensors, and the cases it can express that the
service refuses. The KServe SDK's InferenceRESTClient speaks the same extension, but its
dependencies (protobuf 6, pandas 2) cannot live beside this project's, so it is not installed
here (docs/serving.md)."""
import numpy as np
import pytest
import requests
import tritonclient.http as tritonclient
from tritonclient.utils import InferenceServerException

from service import preprocess
from service_helpers import ServiceProcess, data_url, draw_digit, latest_version, png_bytes

pytestmark = pytest.mark.slow  # starts a server process

DIGITS = (0, 1, 7)


@pytest.fixture(scope="module")
def server(trained_store, tmp_path_factory):
    with ServiceProcess(str(tmp_path_factory.mktemp("oip")), MODEL_URI=trained_store) as s:
        yield s.wait_ready()


@pytest.fixture(scope="module")
def client(server):
    c = tritonclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def drawn():
    """The model inputs of three drawn digits, and what /predict reads in the same drawings."""
    images = [png_bytes(draw_digit(d)) for d in DIGITS]
    x = np.stack([preprocess.preprocess(im, preprocess.Limits(10 ** 6)) for im in images])[:, None]
    return x.astype(np.float32), images


def image_input(x, binary=True):
    tensor = tritonclient.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def test_server_and_model_metadata(client, trained_store):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digitdraw")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata("digitdraw")
    assert meta["versions"] == [latest_version(trained_store)]
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]


def test_defaults_binary_in_and_out(client, server, drawn):
    """What the client sends unless told otherwise: the input as binary data, and every
    output asked for as binary data (the request's binary_data_output)."""
    x, images = drawn
    result = client.infer("digitdraw", [image_input(x)], request_id="r-1")
    assert result.get_response()["id"] == "r-1"
    assert all("data" not in o for o in result.get_response()["outputs"])
    logits, probabilities = result.as_numpy("logits"), result.as_numpy("probabilities")
    assert logits.dtype == probabilities.dtype == np.float32 and logits.shape == probabilities.shape == (3, 10)
    assert list(logits.argmax(axis=1)) == list(DIGITS)
    for image, p in zip(images, probabilities):
        read = requests.post(server.url + "/predict", json={"image": data_url(image)}, timeout=10).json()
        np.testing.assert_allclose(p, read["probabilities"], atol=1e-5)


def test_json_tensors_and_mixed_outputs(client, drawn):
    x, _ = drawn
    binary = client.infer("digitdraw", [image_input(x)])
    as_json = client.infer("digitdraw", [image_input(x, binary=False)],
                           outputs=[tritonclient.InferRequestedOutput("probabilities", binary_data=False),
                                    tritonclient.InferRequestedOutput("logits", binary_data=True)])
    outputs = as_json.get_response()["outputs"]
    assert [o["name"] for o in outputs] == ["probabilities", "logits"]
    assert "data" in outputs[0] and outputs[1]["parameters"]["binary_data_size"] == 3 * 10 * 4
    np.testing.assert_array_equal(as_json.as_numpy("logits"), binary.as_numpy("logits"))
    np.testing.assert_allclose(as_json.as_numpy("probabilities"), binary.as_numpy("probabilities"), atol=1e-6)
    only = client.infer("digitdraw", [image_input(x)], outputs=[tritonclient.InferRequestedOutput("logits")])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["logits"]


def error_of(call):
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


def test_what_the_client_can_send_and_the_service_refuses(client, drawn):
    x, _ = drawn
    status, message = error_of(lambda: client.infer("digitdraw", [image_input(x)], outputs=[
        tritonclient.InferRequestedOutput("logits")] * 2))
    assert status == "400" and "invalid_tensor" in str(message) and "twice" in str(message)
    status, message = error_of(lambda: client.infer("digitdraw", [image_input(x)],
                                                    outputs=[tritonclient.InferRequestedOutput("softmax")]))
    assert status == "400" and "unknown output" in str(message)
    status, message = error_of(lambda: client.infer("digitdraw", [image_input(x)],
                                                    request_compression_algorithm="gzip"))
    assert status == "415" and "unsupported_media_type" in str(message)
    status, message = error_of(lambda: client.infer("digitdraw", [image_input(np.ascontiguousarray(x[..., :14]))]))
    assert status == "400" and "shape" in str(message)
    status, _ = error_of(lambda: client.infer("another", [image_input(x)]))
    assert status == "404"
