"""One epoch's training digits: the stored ones (MNIST, corrections), and pen digits written anew.

``MixedDigits`` is the dataset a worker's DataLoader reads. Its first items are the stored
digits; after them come ``pen_count`` pen digits, each drawn from the pen training digits
and written in a new variant every epoch (training/stroke_augment.py), rendered as the page
renders it (training/render.py) when the DataLoader asks for it. The DistributedSampler
gives each worker its own share of the items, so the workers render in parallel, and only
what they train on. Which digit and which variant an item is depends on the seed, the
epoch and the item only: every rank, and a resumed epoch, sees the same.
"""
import numpy as np
import torch

from training import render
from training.stroke_augment import writing


def pen_count(stored, share):
    """How many pen digits make ``share`` of an epoch beside ``stored`` stored digits."""
    return 0 if share <= 0 else round(stored * share / (1 - share))


class MixedDigits(torch.utils.data.Dataset):
    """(uint8 [1, 28, 28] image, int64 label) items: ``images``/``labels`` (uint8 numpy) first,
    then ``count`` pen digits from ``strokes``/``pen_labels`` (training/pen.py: PenDigits).
    Call ``set_epoch`` before each epoch."""

    def __init__(self, images, labels, strokes=(), pen_labels=(), count=0, seed=0):
        self.images = torch.from_numpy(np.array(images, dtype=np.uint8)).unsqueeze(1)
        self.labels = torch.from_numpy(np.asarray(labels).astype(np.int64))
        self.strokes, self.pen_labels = list(strokes), np.asarray(pen_labels, dtype=np.int64)
        self.count = count if len(self.strokes) else 0
        self.seed = seed
        self.renderer = None  # made in the process that renders (a Skia surface does not pickle)
        self.set_epoch(1)

    def set_epoch(self, epoch):
        """Choose this epoch's pen digits: every pen digit once before any twice, in an order of its own."""
        self.epoch = epoch
        if not self.count:
            self.order = np.zeros(0, np.int64)
            return
        rng = np.random.default_rng([self.seed, epoch])
        rounds = -(-self.count // len(self.strokes))
        self.order = np.concatenate([rng.permutation(len(self.strokes)) for _ in range(rounds)])[:self.count]

    def __len__(self):
        return len(self.labels) + self.count

    def __getitem__(self, i):
        stored = len(self.labels)
        if i < stored:
            return self.images[i], self.labels[i]
        j = i - stored
        k = int(self.order[j])
        if self.renderer is None:
            self.renderer = render.Renderer()
        strokes, width = writing(self.strokes[k], np.random.default_rng([self.seed, self.epoch, j]),
                                 label=int(self.pen_labels[k]))
        digit = render.to_digit(self.renderer.render(strokes, width))
        if digit is None:  # never for a real pen digit; kept well-formed all the same
            digit = np.zeros((render.contract.SIDE,) * 2, np.uint8)
        return torch.from_numpy(digit).unsqueeze(0), torch.tensor(self.pen_labels[k])
