"""The digit classifier: a small CNN that trains fast on 2 CPU cores and on a GPU.

Input is the store contract's (service/contract.py): float32 digits, ink 1.0 on
background 0.0. The MNIST normalization happens inside forward(), so the
exported graph carries it and no caller has to know the mean and std.

Shape: 3x3 conv/BatchNorm/ReLU blocks, one at 28x28, two at 14x14, one at 7x7, with
max-pools between and a global average pool at the end. Only one conv runs at full
resolution, which keeps it near 8M multiply-adds per image at the default width 24
(about 700 training images/s on one CPU core in float32, augmentation included). The
global pool keeps the classifier tiny (width*4*10 weights), which matters with a few
thousand training digits per class, and BatchNorm lets a
one-cycle schedule use a high learning rate from the first epoch.
"""
from torch import nn

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def _conv(c_in, c_out):
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class DigitNet(nn.Module):
    """CNN over the contract's input images returning [N, 10] logits.

    ``width`` scales every layer (channels: w, 2w, 2w, 4w); 24 is the default recipe.
    """

    def __init__(self, width=24, dropout=0.1):
        super().__init__()
        w = width
        self.width = width
        self.features = nn.Sequential(
            *_conv(1, w), nn.MaxPool2d(2),                            # 28 -> 14
            *_conv(w, 2 * w), *_conv(2 * w, 2 * w), nn.MaxPool2d(2),  # 14 -> 7
            *_conv(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * w, 10))

    def forward(self, x):
        x = (x - MNIST_MEAN) / MNIST_STD
        return self.head(self.features(x))


def build_model(width=24):
    """A freshly initialised DigitNet of ``width``."""
    return DigitNet(width=width)
