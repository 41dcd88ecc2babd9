"""The original DigitDraw app, rebuilt as the baseline of bench/serve_bench.py.

What the original did, kept as it was: Flask's development server, torch, the
PyTorch-examples MNIST CNN loaded from a state_dict, and a predict handler that decodes
the image, resizes it to 28x28, normalizes it and returns the argmax.

One substitution: the original used torchvision's transforms, and torchvision is not
installed here. The same steps are written with PIL and torch below:
``Grayscale() -> Resize((28, 28)) -> ToTensor() -> Normalize((0.1307,), (0.3081,))``;
for a PIL image torchvision's Resize is PIL's bilinear resize, so the numbers match.
Like the original, it converts RGBA to grayscale by dropping the alpha channel, which
is why it reads a transparent canvas as a black square.

Usage: python bench/baseline_app/app.py --weights net.pt [--port 5000]
       python bench/baseline_app/app.py --make-weights net.pt   (seeded random weights;
       the benchmark measures speed, not accuracy)
"""
import argparse
import base64
import io

import torch
import torch.nn as nn
import torch.nn.functional as F
from flask import Flask, jsonify, request
from PIL import Image


class Net(nn.Module):  # github.com/pytorch/examples mnist/main.py
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def transform(image):
    """torchvision: Grayscale(), Resize((28, 28)), ToTensor(), Normalize((0.1307,), (0.3081,))."""
    image = image.convert("L").resize((28, 28), Image.BILINEAR)
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).to(torch.float32).div(255)
    return ((x - 0.1307) / 0.3081).view(1, 1, 28, 28)


def create_app(weights):
    app = Flask(__name__)
    model = Net()
    model.load_state_dict(torch.load(weights))
    model.eval()

    @app.route("/predict", methods=["POST"])
    def predict():
        data = request.get_json()
        image = Image.open(io.BytesIO(base64.b64decode(data["image"].split(",")[-1])))
        with torch.no_grad():
            output = model(transform(image))
        probabilities = output.exp()[0]
        digit = int(output.argmax(dim=1))
        return jsonify(digit=digit, confidence=float(probabilities[digit]), probabilities=probabilities.tolist())

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", help="state_dict file to serve")
    parser.add_argument("--make-weights", help="write a seeded, untrained state_dict here and exit")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    if args.make_weights:
        torch.manual_seed(0)
        torch.save(Net().state_dict(), args.make_weights)
    else:
        create_app(args.weights).run(host=args.host, port=args.port)
