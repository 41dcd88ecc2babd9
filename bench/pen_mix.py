"""Which pen mix to train: a short single-process training per setting, scored on the held-out pen writers.

Each run trains the default model (training/model.py) from the same seed for ``--epochs``
on the 29,000 bundled MNIST digits plus ``--pen-weight`` freshly written variants of every
pen training digit per epoch (training/stroke_augment.py with the ranges ``--config``
names, rendered as the page renders them by training/render.py), with the batch
augmentation and the one-cycle SGD recipe of training/trainer.py: RECIPE. It reports
pen_val (the held-out writers, training/pen.py) overall and per digit, MNIST validation
and, with ``--mnist-test``, the official test set. One process, one thread: two settings
run side by side on two cores.

    python -m bench.pen_mix slash-w4 --config slash --pen-weight 4 --mnist-test DIR

A pen weight w is a pen share of 6,281 w / (29,000 + 6,281 w) (--pen-share of
python -m training: 0.18, 0.30, 0.46 for 1, 2, 4). Appends the result to
bench/results/pen-mix.jsonl.
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from bench import ROOT, machine
from service.contract import PIXEL_MAX
from training import pen, render, stroke_augment
from training.augment import augment
from training.data import TEST_IMAGES, TEST_LABELS, load_mnist, read_pair
from training.evaluate import evaluate
from training.model import build_model
from training.trainer import RECIPE

AUG = stroke_augment.AUGMENT
CONFIGS = {  # stroke-space augmentation settings compared
    "fixed": dict(stroke_augment.FIXED),  # the page's pen at one size: no augmentation
    "size-width": {"size": AUG["size"], "width": AUG["width"]},
    "all": {k: v for k, v in AUG.items() if k != "slash"},  # + slant, turn, aspect, wobble, ends, event rate
    "slash": dict(AUG),  # + slashed zeros: training's default
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name")
    ap.add_argument("--config", choices=sorted(CONFIGS), default="slash")
    ap.add_argument("--pen-weight", type=int, default=4, help="written variants of each pen digit per epoch (0: none)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--mnist-test", help="a directory with the t10k IDX files (the official test set)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    data = load_mnist("bundled", log=lambda *a: None)
    train, held = pen.split(pen.load())
    pen_x, pen_y = render.digits(pen.val_drawings(held)), held.labels

    def variant(v):
        config = CONFIGS[args.config]
        return render.digits([stroke_augment.writing(s, np.random.default_rng([v, i]), config, label=int(y))
                              for i, (s, y) in enumerate(zip(train.strokes, train.labels))])

    torch.manual_seed(RECIPE["seed"])
    model = build_model(RECIPE["width"]).to(memory_format=torch.channels_last)
    batch = RECIPE["batch_size"]
    steps = (len(data.train_y) + len(train) * args.pen_weight) // batch
    opt = torch.optim.SGD(model.parameters(), lr=RECIPE["lr"], momentum=0.9, nesterov=True,
                          weight_decay=RECIPE["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=RECIPE["lr"], total_steps=args.epochs * steps,
                                                pct_start=0.25)
    cpu, history = torch.device("cpu"), []
    for epoch in range(args.epochs):
        torch.manual_seed(RECIPE["seed"] + 1000 * (epoch + 1))
        pens = [variant(epoch * args.pen_weight + k) for k in range(args.pen_weight)]
        x = torch.from_numpy(np.concatenate([data.train_x, *pens])).unsqueeze(1)
        y = torch.from_numpy(np.concatenate([data.train_y, *[train.labels] * args.pen_weight]).astype(np.int64))
        order = torch.randperm(len(y))
        model.train()
        for b in range(steps):
            idx = order[b * batch:(b + 1) * batch]
            xb = augment(x[idx].float().div_(PIXEL_MAX)).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=RECIPE["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        val = evaluate(model, data.val_x, data.val_y, cpu)[0] / len(data.val_y)
        history.append({"epoch": epoch + 1, "mnist_val": val, "pen_val": evaluate(model, pen_x, pen_y, cpu)[0] / len(pen_y)})
        print(history[-1], flush=True)
    preds = evaluate(model, pen_x, pen_y, cpu)[2]
    per_digit = [round(float((preds[pen_y == d] == d).mean()), 4) for d in range(10)]
    result = {"name": args.name, "config": args.config, "pen_weight": args.pen_weight, "epochs": args.epochs,
              "pen_val": round(float((preds == pen_y).mean()), 4), "pen_per_digit": per_digit,
              "mnist_val": history[-1]["mnist_val"], "history": history, "wall_s": round(time.time() - t0, 1),
              "machine": machine.describe(gauge=False), "load": os.getloadavg()}
    if args.mnist_test:
        test_x, test_y = read_pair(args.mnist_test, TEST_IMAGES, TEST_LABELS)
        result["mnist_test"] = evaluate(model, test_x, test_y, cpu)[0] / len(test_y)
    print(json.dumps({k: v for k, v in result.items() if k not in ("history", "machine")}))
    with open(os.path.join(ROOT, "bench", "results", "pen-mix.jsonl"), "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
