"""The driver side of training: Ray itself, the recipe, and the TorchTrainer that runs the workers.

Resume is by run name. A worker that dies makes Ray restart the worker group
(FailureConfig); a driver that dies (a RayJob retry, Ctrl-C, kill -9) is rerun with the
same ``--run-name`` and ``--storage-path``, and Ray Train 2.60 finds the run's checkpoint
snapshot by itself; a run directory that is gone (a new PVC) is restored from the mirror.
Each worker takes the newest complete checkpoint of the three (training/worker.py). A fresh
run gets a fresh name (``digitdraw-YYYYmmdd-HHMMSS``), so it never resumes by accident.
"""
import os
import time

# The recipe. Width 24 for 8 epochs over the 29,000 bundled training digits fits the
# 3-minute budget of the default local run on 2 CPU cores: measured 143 s with Ray start-up,
# 99.42% on the official test set (docs/benchmarks.md). Over a 9,000-digit sample every
# recipe that fitted scored about 99.25%: more distinct digits beat more passes
# (training/sample/README.md). A global batch of 256 (128 per worker) halves the DDP
# synchronisations of a batch of 128, for 7% more images/s at the same accuracy.
RECIPE = {
    "epochs": 8,
    "batch_size": 256,          # global: split evenly across workers
    "lr": 0.2,                  # peak of the one-cycle schedule
    "weight_decay": 5e-4,
    "label_smoothing": 0.1,
    "seed": 0,
    "width": 24,
    "augment": True,
    "precision": "auto",        # bf16 autocast where the CPU does bf16 natively (worker.native_bf16)
}

# Ray's settings for every process of a run on one machine: loopback only, one auth mode
# for the cluster and its clients, no usage reporting, and worker prints reaching the
# driver once (Ray Train's print patch would log them twice). Inside a cluster (RAY_ADDRESS
# set, e.g. a RayJob) the pods set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 instead: 0 would make
# the driver advertise 127.0.0.1 and keep workers on other nodes from joining.
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                 "RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def use_local_ray_env(environ=os.environ):
    """Set LOCAL_RAY_ENV's defaults in ``environ`` (values already there win); without
    RAY_ADDRESS only, so a driver inside a cluster keeps the cluster's settings."""
    for name, value in LOCAL_RAY_ENV.items():
        if name != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" or not environ.get("RAY_ADDRESS"):
            environ.setdefault(name, value)
    return environ


def start_ray(num_workers, log=print):
    """Connect to RAY_ADDRESS if set (inside a RayJob), else start Ray embedded on loopback.
    Returns the seconds it took."""
    import ray

    t = time.time()
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        where = f"cluster at {os.environ['RAY_ADDRESS']}"
    else:
        # One CPU per worker plus one for the Train controller; never fewer than the machine has.
        cpus = max(os.cpu_count() or 1, num_workers + 1)
        # No dashboard: it is a dozen more processes to start on 2 cores. Without its state
        # API, Ray Train's placement-group cleaner warns every few seconds that it cannot
        # poll; so Ray core logs only errors (Ray Train keeps its own level, WARNING).
        ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_config=ray.LoggingConfig(log_level="ERROR"))
        where = "embedded on 127.0.0.1"
    seconds = time.time() - t
    log(f"ray: {where}, started in {seconds:.1f}s, resources {ray.cluster_resources()}")
    return seconds


def run_training(recipe, data, num_workers=2, use_gpu=False, storage_path="runs", run_name=None,
                 checkpoint_mirror=None, max_failures=2, keep_checkpoints=3, t0=None, loop=None):
    """Train with Ray Train (ray.init must have been called); return the ray.train.Result.

    ``data`` holds numpy train_x/train_y/val_x/val_y (uint8 digits and labels), optionally
    val_sets (name -> (images, labels): other held-out sets, each scored every epoch as
    ``<name>_acc``) and init_model (a state dict to start from when the run has no
    checkpoint of its own); ``recipe`` overrides
    RECIPE. Checkpoints go to ``<storage_path>/<run_name>`` and, if given, to
    ``<checkpoint_mirror>/<run_name>``. ``loop`` is the per-worker function (default
    training/worker.py's), called with the recipe and the run's settings.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from training import checkpoints
    from training.worker import train_loop_per_worker

    storage_filesystem, path = checkpoints.ray_storage(storage_path)
    config = {**RECIPE, **recipe,
              "data_ref": ray.put(data),
              # Workers read the run directory too; a local path must not depend on their cwd.
              "storage_path": storage_path if storage_path.startswith("gs://") else path,
              "run_name": run_name, "checkpoint_mirror": checkpoint_mirror, "keep_checkpoints": keep_checkpoints,
              "storage_emulator_host": os.environ.get("STORAGE_EMULATOR_HOST"),
              "t0": time.time() if t0 is None else t0}
    trainer = TorchTrainer(
        loop or train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=run_name,
            storage_path=path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints, checkpoint_score_attribute="val_acc",
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),  # our per-epoch lines, not every report
        ),
    )
    return trainer.fit()
