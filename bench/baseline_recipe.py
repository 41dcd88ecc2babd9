"""The original app's training recipe, as a Ray Train worker loop, for the training benchmark.

PyTorch's examples/mnist: its Net (conv32, conv64, max-pool, dropout, fc128, dropout, fc10),
Adadelta lr 1.0, StepLR gamma 0.7 per epoch, batch 64, no augmentation, float32. It runs
on the same data, workers and Ray Train driver as our recipe (training/trainer.py), reports
the same per-epoch metrics, and stops after the epoch that passes ``time_budget_s``.
"""
import json
import os
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from bench.baseline_app.app import Net
from service.contract import PIXEL_MAX
from training.evaluate import evaluate
from training.worker import quiet_ray_train_logs
from training.model import MNIST_MEAN, MNIST_STD

RECIPE = {"lr": 1.0, "batch_size": 64, "gamma": 0.7, "epochs": 1000, "time_budget_s": 150.0, "seed": 0}


class ExamplesNet(Net):
    """The original app's model (bench/baseline_app), taking DigitNet's input: the MNIST
    normalisation, which the original app did in its transform, happens inside."""

    def forward(self, x):
        return super().forward((x - MNIST_MEAN) / MNIST_STD)


def train_loop_per_worker(config):
    """The original recipe on one Ray Train worker; every rank reports every epoch's metrics,
    and rank 0 attaches a checkpoint holding the history so far (history.json)."""
    import ray
    import ray.train
    import ray.train.torch

    quiet_ray_train_logs()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    data = ray.get(config["data_ref"])
    train = torch.utils.data.TensorDataset(torch.from_numpy(data["train_x"].copy()).unsqueeze(1),
                                           torch.from_numpy(data["train_y"].astype(np.int64)))
    per_worker_batch = max(1, config["batch_size"] // world)
    loader = ray.train.torch.prepare_data_loader(
        torch.utils.data.DataLoader(train, batch_size=per_worker_batch, shuffle=True, drop_last=True))
    torch.manual_seed(config["seed"])
    model = ray.train.torch.prepare_model(ExamplesNet())
    optimizer = torch.optim.Adadelta(model.parameters(), lr=config["lr"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config["gamma"])
    val_x, val_y = data["val_x"][rank::world], data["val_y"][rank::world]
    history = []
    for epoch in range(1, config["epochs"] + 1):
        if world > 1:
            loader.sampler.set_epoch(epoch)
        t_epoch = time.time()
        loss_sum, batches = 0.0, len(loader)
        for x, y in loader:
            loss = F.cross_entropy(model(x.float().div_(PIXEL_MAX)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
        scheduler.step()
        train_time = time.time() - t_epoch
        correct, vloss, _ = evaluate(model, val_x, val_y, device)
        over = time.time() - config["t0"] > config["time_budget_s"]
        totals = torch.tensor([correct, vloss, len(val_y), loss_sum, batches, over], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(totals)  # summed, so every rank decides to stop alike
        metrics = {"epoch": epoch, "train_loss": totals[3].item() / totals[4].item(),
                   "val_acc": totals[0].item() / totals[2].item(), "val_loss": totals[1].item() / totals[2].item(),
                   "images_per_s_per_worker": batches * per_worker_batch / train_time,
                   "epoch_time_s": time.time() - t_epoch, "elapsed_s": time.time() - config["t0"]}
        history.append(metrics)
        if rank == 0:
            print(f"original epoch {epoch:3d}  val_acc {metrics['val_acc']:.4f}  elapsed {metrics['elapsed_s']:6.1f}s",
                  flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                with open(os.path.join(tmp, "history.json"), "w") as f:
                    json.dump(history, f)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        if totals[5].item() > 0:
            break
