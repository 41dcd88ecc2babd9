"""One Ray Train worker: DDP training with augmentation, a report and a checkpoint every epoch.

``train_loop_per_worker(config)`` runs in every worker process; ``config`` is the recipe
(training/trainer.py: RECIPE) plus what the driver adds: the data's object ref, the run's
name, storage and mirror. Rank 0 writes the checkpoints (training/checkpoints.py).
"""
import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from service.contract import PIXEL_MAX
from training import checkpoints
from training.augment import augment
from training.evaluate import evaluate
from training.mix import MixedDigits
from training.model import build_model


def native_bf16(device):
    """True where bfloat16 autocast makes training faster rather than slower: a CPU with
    AMX or AVX512-BF16 instructions (Intel Sapphire Rapids and later, AMD Zen 4). Elsewhere
    bf16 is emulated and slower than float32. GPUs stay on float32 under "auto"."""
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def quiet_ray_train_logs():
    """Keep Ray Train's per-report INFO lines out of the console; our epoch lines say it all.

    Ray 2.60 names this logger after its file path, so RunConfig's LoggingConfig misses it.
    """
    import logging

    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _resume_state(config):
    """(state, whether Ray handed it over): the newest complete checkpoint of this run,
    Ray's (a restarted worker group or a rerun of the same name), the run directory's (Ray
    may not have registered the newest yet) or the mirror's (the run directory is gone).
    (None, False) for a fresh run."""
    import ray.train

    from_ray = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        from_ray = checkpoints.load(checkpoint)
        from_ray["source"] = checkpoint.path
    others = [checkpoints.newest_complete(config["storage_path"], config["run_name"])]
    if config.get("checkpoint_mirror"):
        others.append(checkpoints.newest_complete(config["checkpoint_mirror"], config["run_name"]))
    state = checkpoints.newest([from_ray, *others])  # Ray's own first: among equals, the one Ray knows
    return state, state is not None and state is from_ray


def train_loop_per_worker(config):
    import ray
    import ray.train
    import ray.train.torch

    quiet_ray_train_logs()
    if config.get("storage_emulator_host"):
        os.environ["STORAGE_EMULATOR_HOST"] = config["storage_emulator_host"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    epochs = config["epochs"]

    data = ray.get(config["data_ref"])
    # uint8 digits, converted per batch; the pen digits rendered as the DataLoader asks for them
    dataset = MixedDigits(data["train_x"], data["train_y"], data.get("pen_strokes", ()), data.get("pen_labels", ()),
                          data.get("pen_count", 0), seed=config["seed"])

    # Same seed on every rank for the initial weights (DDP also broadcasts rank 0's).
    torch.manual_seed(config["seed"])
    model = build_model(config["width"])
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)  # faster oneDNN convolutions
    model = ray.train.torch.prepare_model(model)
    raw = model.module if hasattr(model, "module") else model  # unwrapped from DDP, for state dicts

    # Mixed precision: bf16 matmuls and convolutions, float32 weights, optimizer and
    # evaluation. On an AMX CPU a step takes about two thirds of the float32 time.
    bf16 = config["precision"] == "bf16" or (config["precision"] == "auto" and native_bf16(device))
    if rank == 0:
        print(f"precision: {'bfloat16 autocast' if bf16 else 'float32'} on {device.type}", flush=True)

    per_worker_batch = max(1, config["batch_size"] // world)
    loader = torch.utils.data.DataLoader(dataset, batch_size=per_worker_batch, shuffle=True, drop_last=True)
    loader = ray.train.torch.prepare_data_loader(loader)  # DistributedSampler + move to device

    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9, nesterov=True,
                                weight_decay=config["weight_decay"])
    # A quarter warm-up; the max() keep tiny smoke runs (a few steps) valid for OneCycleLR.
    steps = max(4, epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config["lr"], total_steps=steps,
                                                    pct_start=max(0.25, 2 / steps))

    # Rank 0 chooses the checkpoint and hands it to the others, so every rank resumes alike.
    resume = [_resume_state(config) if rank == 0 else None]
    if world > 1:
        dist.broadcast_object_list(resume, src=0)
    state, from_ray = resume[0]
    history, start_epoch = [], 1
    if state is not None:
        raw.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start_epoch = state["history"], state["epoch"] + 1
        source = state.pop("source")
        if rank == 0:
            print(f"resumed from checkpoint at epoch {state['epoch']} ({source})", flush=True)
        if not from_ray:
            # Report it again so the run directory has it and Ray knows it (the best
            # checkpoint may be this one if no epoch is left).
            _report(state, config, rank)
    elif data.get("init_model") is not None:
        raw.load_state_dict(data["init_model"])  # a warm start: the weights only, a fresh schedule
        if rank == 0:
            print("warm start: initial weights loaded", flush=True)

    val_x, val_y = data["val_x"][rank::world], data["val_y"][rank::world]
    # Other held-out sets (name -> (images, labels)), scored like validation every epoch.
    val_sets = {name: (x[rank::world], y[rank::world]) for name, (x, y) in (data.get("val_sets") or {}).items()}
    t_start = config["t0"]
    for epoch in range(start_epoch, epochs + 1):
        # Seeded per rank and epoch, so a resumed epoch sees the same augmentation.
        torch.manual_seed(config["seed"] + 1000 * epoch + rank)
        if world > 1:
            loader.sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        t_epoch = time.time()
        loss_sum = torch.zeros((), device=device)
        batches = len(loader)
        for x, y in loader:
            x = x.float().div_(PIXEL_MAX)
            if config["augment"]:
                x = augment(x)
            if device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x), y, label_smoothing=config["label_smoothing"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach()
        train_time = time.time() - t_epoch

        # Validation is sharded across ranks and summed, so every rank has the totals.
        correct, vloss, _ = evaluate(model, val_x, val_y, device)
        sets = [(evaluate(model, x, y, device)[0] if len(y) else 0, len(y)) for x, y in val_sets.values()]
        totals = torch.tensor([correct, vloss, len(val_y), loss_sum.item(), batches, *(v for s in sets for v in s)],
                              device=device, dtype=torch.float64)
        if world > 1:
            dist.all_reduce(totals)
        metrics = {
            "epoch": epoch,
            "train_loss": totals[3].item() / max(1.0, totals[4].item()),
            "val_acc": totals[0].item() / max(1.0, totals[2].item()),
            "val_loss": totals[1].item() / max(1.0, totals[2].item()),
            "images_per_s": world * batches * per_worker_batch / train_time,
            "images_per_s_per_worker": batches * per_worker_batch / train_time,
            "epoch_time_s": time.time() - t_epoch,
            "elapsed_s": time.time() - t_start,
            "lr": scheduler.get_last_lr()[0],
        }
        for k, name in enumerate(val_sets):
            if totals[6 + 2 * k].item():
                metrics[f"{name}_acc"] = totals[5 + 2 * k].item() / totals[6 + 2 * k].item()
        history = history + [metrics]

        if rank == 0:
            others = "".join(f"  {name}_acc {metrics[f'{name}_acc']:.4f}" for name in val_sets if f"{name}_acc" in metrics)
            print(f"epoch {epoch:3d}/{epochs}  loss {metrics['train_loss']:.4f}  val_acc {metrics['val_acc']:.4f}"
                  f"{others}  {metrics['images_per_s']:7.0f} img/s  elapsed {metrics['elapsed_s']:6.1f}s", flush=True)
        state = {"model": raw.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "epoch": epoch, "metrics": metrics, "history": history, "model_config": {"width": config["width"]}}
        _report(state, config, rank)


def _report(state, config, rank):
    """ray.train.report on every rank; rank 0 attaches the checkpoint and copies it to the mirror."""
    import ray.train
    from ray.train import Checkpoint

    if rank != 0:
        ray.train.report(state["metrics"])
        return
    name = checkpoints.dir_name(state["epoch"])
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints.save(state, tmp)
        ray.train.report(state["metrics"], checkpoint=Checkpoint.from_directory(tmp), checkpoint_dir_name=name)
        if config.get("checkpoint_mirror"):
            checkpoints.mirror(tmp, config["checkpoint_mirror"], config["run_name"], name,
                               checkpoints.keep_names(state["history"], config["keep_checkpoints"]))
