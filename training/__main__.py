"""python -m training: train on Ray Train, write a report, export to ONNX and publish.

Every flag has an environment variable of the same meaning (shown in --help), so the
same image runs from a shell, a Makefile or a KubeRay RayJob manifest.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import numpy as np

from training.trainer import RECIPE, use_local_ray_env

use_local_ray_env()  # before Ray is imported: it reads them then

from training.data import DATA_DIR_HELP, DATA_ERRORS, MIRRORS_HELP, SOURCE_HELP, load_mnist  # noqa: E402
from training.champion import DIGIT_MARGIN, PROMOTION_MARGIN  # noqa: E402
from training.feedback.loader import HOLDOUT_SHARE, MAX_CORRECTIONS, MAX_SHARE, TRUST  # noqa: E402
from training import mix, pen  # noqa: E402
from service import contract  # noqa: E402
from service.store import StoreError, open_store  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bool(text):
    if str(text).lower() in ("1", "true", "yes", "on"):
        return True
    if str(text).lower() in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _optional_int(text):
    return None if str(text).lower() in ("", "none", "all", "0") else int(text)


def _trust(text):
    if text not in TRUST:
        raise argparse.ArgumentTypeError(f"{text!r}: use {' or '.join(TRUST)}")
    return text


# (flag, env var, default, type, help). The defaults here are the documented ones.
FLAGS = [
    ("--data", "TRAIN_DATA", "auto", str, SOURCE_HELP),
    ("--data-dir", "DATA_DIR", ".data", str, DATA_DIR_HELP),
    ("--mirrors", "MNIST_MIRRORS", "", str, MIRRORS_HELP),
    ("--epochs", "EPOCHS", RECIPE["epochs"], int, "training epochs (one-cycle schedule over all of them)"),
    ("--batch-size", "BATCH_SIZE", RECIPE["batch_size"], int, "global batch size, split across workers"),
    ("--lr", "LR", RECIPE["lr"], float, "peak learning rate of the one-cycle SGD schedule"),
    ("--precision", "PRECISION", RECIPE["precision"], str,
     "auto (bfloat16 autocast on CPUs with AMX or AVX512-BF16, else float32), bf16 or fp32"),
    ("--num-workers", "NUM_WORKERS", 2, int, "Ray Train workers (DDP processes)"),
    ("--use-gpu", "USE_GPU", False, _bool, "one GPU per worker, NCCL instead of gloo"),
    ("--storage-path", "STORAGE_PATH", "runs", str,
     "Ray Train storage: local dir, shared (ReadWriteMany) PVC mount or gs://bucket/prefix; "
     "checkpoints and the report go to <storage-path>/<run-name>"),
    ("--checkpoint-mirror", "CHECKPOINT_MIRROR", "none", str,
     "also copy every checkpoint to <mirror>/<run-name> (gs://bucket/prefix or a dir); resume falls back "
     "to it when the run directory is gone; none to disable"),
    ("--run-name", "RUN_NAME", "", str,
     "run name; reuse one to resume that run (default: a fresh digitdraw-<timestamp>)"),
    ("--publish", "PUBLISH_URIS", contract.DEFAULT_MODEL_URI, str,
     "comma-separated model stores (dirs or gs://bucket/prefix) to publish the ONNX model to; none to skip "
     "export and publish"),
    ("--feedback", "FEEDBACK_URI", "none", str,
     "feedback store (dir or gs://bucket/prefix) whose trusted corrections join the training data; "
     f"{int(HOLDOUT_SHARE * 100)}%% of their writers (by a keyed hash) never train, and their approved corrections "
     "are the real-drawings evaluation set, frozen in the first --publish store; none to skip"),
    ("--feedback-trust", "FEEDBACK_TRUST", "approved", _trust,
     "approved: train on the corrections a reviewer approved (python -m training.feedback approve); all: on every "
     "one not rejected, for a store only you write to, such as your own local page"),
    ("--feedback-max", "FEEDBACK_MAX", MAX_CORRECTIONS, int,
     "train on at most this many corrections, the newest first; the rest are counted and named in the log"),
    ("--feedback-share", "FEEDBACK_SHARE", MAX_SHARE, float,
     "no client and no network gives more than this share of --feedback-max"),
    ("--feedback-weight", "FEEDBACK_WEIGHT", 8, int,
     "times each correction is seen per epoch (MNIST digits once); docs/training.md says how it was chosen"),
    ("--pen-share", "PEN_SHARE", 0.45, float,
     "share of each epoch's training digits that are pen digits (training/unipen), each written anew in stroke "
     "space and rendered as the page renders it; 0 for none (the held-out pen writers are scored as pen_val "
     "either way); docs/training.md says how it was chosen"),
    ("--init-from", "INIT_FROM", "none", str,
     "warm start: latest (the checkpoint published beside LATEST's model in the first --publish store), "
     "none (fresh weights), or the URI of a checkpoint file or directory"),
    ("--max-train-samples", "MAX_TRAIN_SAMPLES", None, _optional_int,
     "use only the first N training digits (quick runs); default all"),
    ("--promotion-margin", "PROMOTION_MARGIN", PROMOTION_MARGIN, float,
     "do not move LATEST if the new model's accuracy on any trusted set (MNIST validation, real drawings, the "
     "bundled pen digits) is below LATEST's model's by more than this; both scored in this run"),
    ("--digit-margin", "DIGIT_MARGIN", DIGIT_MARGIN, float,
     "nor if, on any one digit of any of those sets, it reads right fewer than LATEST's model by more than this "
     "share of that digit's samples and by more than one sample (training/champion.py says why)"),
    ("--force-promote", "FORCE_PROMOTE", False, _bool, "move LATEST regardless of the promotion gate"),
    ("--quantize", "QUANTIZE", "int8", str,
     "int8: publish ONNX Runtime's int8 version of the model if it matches the float one on the validation "
     "digits (training/quantize.py), else the float model; none: always the float model"),
    ("--max-failures", "MAX_FAILURES", 3, int, "worker-group restarts from the last checkpoint before giving up"),
    ("--keep-checkpoints", "KEEP_CHECKPOINTS", 3, int, "checkpoints kept: the best N by validation accuracy"),
    ("--seed", "SEED", RECIPE["seed"], int, "random seed (each rank adds its rank)"),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Also read: RAY_ADDRESS (join that Ray cluster, e.g. inside a RayJob; default: start Ray "
               "embedded on 127.0.0.1), STORAGE_EMULATOR_HOST (use a GCS emulator for gs://), CODE_REVISION "
               "(recorded in model.json when git is unavailable).")
    for flag, env, default, kind, text in FLAGS:
        value = os.environ.get(env)
        parser.add_argument(flag, type=kind, default=kind(value) if value is not None else default,
                            help=f"{text} (env {env}; default {default if default not in ('', None) else 'none'})")
    return parser.parse_args(argv)


def code_revision():
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if rev.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("CODE_REVISION", "unknown")


def main(argv=None):
    t0 = time.time()
    args = parse_args(argv)
    if args.precision not in ("auto", "bf16", "fp32"):
        sys.exit(f"error: --precision {args.precision!r}: use auto, bf16 or fp32")
    if args.quantize not in ("int8", "none"):
        sys.exit(f"error: --quantize {args.quantize!r}: use int8 or none")
    if not 0 <= args.pen_share < 1:
        sys.exit(f"error: --pen-share {args.pen_share}: use a share from 0 (no pen digits) up to, not including, 1")
    log = print
    run_name = args.run_name or f"digitdraw-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    mirror = _none(args.checkpoint_mirror)
    stores = [s.strip() for s in (_none(args.publish) or "").split(",") if s.strip()]
    os.environ.setdefault("DIGITDRAW_ACTOR", f"training run {run_name}")  # who moves LATEST, in its history

    # ---- data: MNIST, pen digits, and the corrections people sent ----------------------------
    try:
        data = load_mnist(args.data, args.data_dir, args.mirrors or None, log=log)
    except DATA_ERRORS as e:
        sys.exit(f"error: cannot load training data: {e}")
    train_x, train_y = data.train_x, data.train_y
    if args.max_train_samples:
        train_x, train_y = train_x[:args.max_train_samples], train_y[:args.max_train_samples]
    log(f"data: {data.source}; training on {len(train_y):,} digits, validating on {len(data.val_y):,}")
    real, used, feedback_info = corrections(args, stores, log)
    if used is not None and len(used):
        train_x = np.concatenate([train_x, *[used.x] * args.feedback_weight])
        train_y = np.concatenate([train_y, *[used.y] * args.feedback_weight])
    pen_train, pen_val = pen.load_sets(log)
    pen_info = {"share": args.pen_share, "per_epoch": mix.pen_count(len(train_y), args.pen_share),
                "digits": len(pen_train), "held_out": len(pen_val[1])}

    from training import checkpoints
    try:
        init = checkpoints.warm_start(args.init_from, stores)
    except (ValueError, StoreError) as e:
        sys.exit(f"error: {e}")

    # ---- training on Ray ------------------------------------------------------------------
    import ray
    import torch

    from training.evaluate import confusion_matrix, evaluate
    from training.model import build_model
    from training.report import write_report
    from training.trainer import run_training, start_ray

    ray_start_s = start_ray(args.num_workers, log)
    recipe = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
              "precision": args.precision}
    if init:
        recipe["width"] = init[1]["width"]
        log(f"warm start: from {init[2]}")
    log(f"train: run {run_name} -> {args.storage_path.rstrip('/')}/{run_name}"
        + (f" (mirror {mirror.rstrip('/')}/{run_name})" if mirror else "")
        + f"; {args.num_workers} worker(s), {'GPU' if args.use_gpu else 'CPU'}, {args.epochs} epochs")
    # The held-out sets scored every epoch, and (with MNIST validation) the trusted sets the gate
    # grades on: the bundled pen writers nobody can write to, and the frozen approved corrections.
    val_sets = {"pen_val": pen_val, **({"real": (real.x, real.y)} if real is not None and len(real) else {})}
    arrays = {"train_x": train_x, "train_y": train_y, "val_x": data.val_x, "val_y": data.val_y,
              "pen_strokes": pen_train.strokes, "pen_labels": pen_train.labels, "pen_count": pen_info["per_epoch"],
              "val_sets": val_sets, "init_model": init[0] if init else None}
    result = run_training(recipe, arrays, num_workers=args.num_workers, use_gpu=args.use_gpu,
                          storage_path=args.storage_path, run_name=run_name, checkpoint_mirror=mirror,
                          max_failures=args.max_failures, keep_checkpoints=args.keep_checkpoints, t0=t0)
    train_s = time.time() - t0
    if result.error:
        sys.exit(f"error: training run {run_name} failed: {result.error}")

    # ---- the result: evaluate and report the final checkpoint -------------------------------
    # The final checkpoint is what we evaluate, report and export: the one-cycle schedule
    # ends with the learning rate near zero, so the last epoch's weights are its result.
    # Picking the "best" epoch by 1,000 validation digits picks noise (one digit is 0.1%):
    # measured on the official MNIST test set, the best-by-validation epoch 17 of a default
    # run scored 99.04% and its last epoch 99.26%.
    with result.checkpoint.as_directory() as d, open(os.path.join(d, checkpoints.CHECKPOINT_FILE), "rb") as f:
        checkpoint_bytes = f.read()
    state = checkpoints.load_bytes(checkpoint_bytes)
    model = build_model(state["model_config"]["width"])
    model.load_state_dict(state["model"])
    model.eval()
    cpu = torch.device("cpu")
    correct, _, preds = evaluate(model, data.val_x, data.val_y, cpu)
    val_acc = correct / len(data.val_y)
    metrics = {"val_accuracy": val_acc, "val_correct": correct, "val_count": int(len(data.val_y)),
               "epoch": state["epoch"]}
    if data.test_x is not None:
        metrics["test_accuracy"] = evaluate(model, data.test_x, data.test_y, cpu)[0] / len(data.test_y)
    confusions = {}
    for name, (x, y) in val_sets.items():
        set_correct, _, set_preds = evaluate(model, x, y, cpu)
        metrics.update({f"{name}_accuracy": set_correct / len(y), f"{name}_count": int(len(y))})
        confusions[name] = confusion_matrix(y, set_preds)
    history = state["history"]
    summary = {**metrics, "val_acc": val_acc, "run_name": run_name, "epochs": args.epochs,
               "train_wall_s": train_s, "ray_start_s": ray_start_s,
               "images_per_s": sum(m["images_per_s"] for m in history) / len(history),
               "last_epoch": (result.metrics or history[-1])["epoch"], "feedback": feedback_info or None,
               "pen": pen_info,
               "warm_start": init[2] if init else None}
    report_uri = write_report(f"{args.storage_path.rstrip('/')}/{run_name}", history, summary,
                              confusion_matrix(data.val_y, preds), confusions)
    log(f"summary: run {run_name}: epoch {state['epoch']}/{args.epochs}, val accuracy {val_acc:.4f} "
        f"({correct}/{len(data.val_y)})"
        + f", pen_val {metrics['pen_val_accuracy']:.4f} of {len(pen_val[1])}"
        + (f", real drawings {metrics['real_accuracy']:.4f} of {metrics['real_count']}" if "real" in val_sets else "")
        + (f", test accuracy {metrics['test_accuracy']:.4f}" if "test_accuracy" in metrics else "")
        + f", {summary['images_per_s']:.0f} img/s, wall {train_s:.1f}s (Ray start {ray_start_s:.1f}s); "
          f"report in {report_uri}")
    ray.shutdown()

    if not stores:
        log("publish: skipped (--publish none)")
        return 0

    # ---- export, quantize, and publish if it beats the champion ---------------------------
    from service.contract import model_input
    from training.champion import Gate
    from training.export import ParityError, check_parity, export_onnx
    from training.publish import publish

    onnx_bytes = export_onnx(model)
    try:
        diff = check_parity(model, onnx_bytes, torch.from_numpy(model_input(data.val_x[:256])))
    except ParityError as e:
        sys.exit(f"error: run {run_name}: {e}")
    log(f"export: {len(onnx_bytes):,} bytes of ONNX; ONNX Runtime matches torch within {diff:.1e}")
    quantization = {"scheme": "none"}
    if args.quantize == "int8":
        onnx_bytes, metrics, quantization = quantize(onnx_bytes, data, train_x, metrics, log)
    gate = Gate({"mnist_val": (data.val_x, data.val_y), **val_sets}, args.promotion_margin, args.digit_margin,
                eval_set=real.version if real is not None else None, log=log)
    for name, score in gate.scores(onnx_bytes).items():  # the published model's own scores, as the gate sees them
        if name != "mnist_val":
            metrics[f"{name}_accuracy"] = score["accuracy"]
    for uri in stores:  # a local store directory is made on first publish
        if "://" not in uri:
            os.makedirs(uri, exist_ok=True)
    meta = {"metrics": metrics, "quantization": quantization, "data_source": data.source,
            "code_revision": code_revision(), "run_name": run_name, "feedback": feedback_info or None, "pen": pen_info,
            "warm_start": init[2] if init else None,
            "config": {**vars(args), "model": state["model_config"],
                       "recipe": {**RECIPE, **recipe},  # the recipe this run used: the defaults with the flags applied
                       "train_samples": int(len(train_y)) + pen_info["per_epoch"]}}
    try:
        result = publish(onnx_bytes, json.loads(json.dumps(meta, default=str)), stores,
                         gate, force=args.force_promote, log=log, checkpoint=checkpoint_bytes)
    except StoreError as e:
        sys.exit(f"error: {e}")
    for uri, r in result["stores"].items():
        log(f"publish: {uri}: version {result['version']} {'promoted to LATEST' if r['promoted'] else 'NOT promoted'}"
            f" ({r['reason']})")
    return 0


def _none(text):
    return None if text.strip().lower() in ("", "none") else text.strip()


def corrections(args, stores, log):
    """(the real-drawings evaluation set or None, the corrections to train on or None, what
    was used) from --feedback. The evaluation set is frozen in the first --publish store
    (training/evalset.py), which also keeps the secret that picks the held-out writers;
    without one, they are drawn for this run alone and nothing is frozen."""
    uri = _none(args.feedback)
    if uri is None:
        return None, None, {}
    import secrets

    from training import evalset
    from training.feedback import loader

    model_store = open_store(stores[0]) if stores else None
    try:
        if model_store is not None and "://" not in stores[0]:
            os.makedirs(stores[0], exist_ok=True)  # a local store directory is made on first use
        secret = evalset.secret(model_store) if model_store is not None else secrets.token_bytes(32)
        found = loader.load(open_store(uri), secret, args.feedback_trust, args.feedback_max, args.feedback_share, log)
        if model_store is not None:
            real = evalset.update(model_store, found.held, found.states, uri, log)
        else:
            held = found.held
            real = evalset.EvalSet("unfrozen", held.ids, held.writers, held.x, held.y) if len(held) else None
            log("evalset: no --publish store: the held-out writers are drawn for this run alone, nothing is frozen")
    except StoreError as e:
        sys.exit(f"error: cannot read the corrections in {uri}: {e}; check FEEDBACK_URI, or pass --feedback none")
    except ValueError as e:
        sys.exit(f"error: {e}")
    log(f"feedback: training on {len(found.train):,} corrections (each seen {args.feedback_weight} times an epoch), "
        f"grading on {len(real) if real is not None else 0:,} of held-out writers")
    info = {"uri": uri, "trust": args.feedback_trust, "used": len(found.train), "weight": args.feedback_weight,
            "eval_set": real.version if real is not None else None, "eval_count": len(real) if real is not None else 0,
            **{k: found.counts[k] for k in ("records", "pending", "approved", "rejected", "read", "held_out",
                                            "skipped", "over_share", "left", "limit", "cap")}}
    return real, found.train, info


def quantize(onnx_bytes, data, train_x, metrics, log):
    """(model bytes, metrics, quantization record) to publish: the int8 model with its own
    accuracies if it passes training/quantize.py's check, else the float model unchanged."""
    from training.evaluate import predict
    from training.quantize import CALIBRATION_IMAGES, check, quantize_int8

    int8_bytes = quantize_int8(onnx_bytes, train_x)
    result = check(onnx_bytes, int8_bytes, data.val_x, data.val_y)
    record = {"scheme": "int8" if result["passed"] else "none", "calibration_images": CALIBRATION_IMAGES,
              "float_size_bytes": len(onnx_bytes), "int8_size_bytes": len(int8_bytes), **result}
    if not result["passed"]:
        log(f"quantize: publishing the float model: {result['reason']}")
        return onnx_bytes, metrics, record
    metrics = {**metrics, "val_accuracy": result["int8_accuracy"], "val_correct": result["int8_correct"]}
    if data.test_x is not None:
        metrics["test_accuracy"] = float((predict(int8_bytes, data.test_x) == data.test_y).mean())
    log(f"quantize: int8, {len(int8_bytes):,} bytes; validation accuracy {result['int8_accuracy']:.4f} "
        f"(float {result['float_accuracy']:.4f}), same digit as float on {result['agreement']:.2%}"
        + (f"; test accuracy {metrics['test_accuracy']:.4f}" if "test_accuracy" in metrics else ""))
    return int8_bytes, metrics, record


if __name__ == "__main__":
    sys.exit(main())
