"""Training benchmark: our recipe against the original app's, same data, machine and time budget.

Both recipes run through the same Ray Train driver (training/trainer.py), one after the
other in one embedded Ray session, on the same data and workers:

- ours: training/worker.py as `python -m training` runs it (DigitNet, batched canvas
  augmentation, SGD + one-cycle, label smoothing, bf16 autocast where the CPU has it), for
  its RECIPE epochs (or --epochs): a schedule sized to end inside the budget;
- original: bench/baseline_recipe.py (the PyTorch-examples MNIST CNN, Adadelta lr 1.0,
  StepLR gamma 0.7 per epoch, batch 64, no augmentation, float32), stopped after the
  epoch that passes ``--budget-s`` seconds.

Recorded per recipe: validation accuracy per epoch with elapsed time, time to 98% and
99% validation accuracy (from the start of trainer.fit, so worker start-up counts),
training images/s per worker, and the start-up overhead (trainer.fit -> first batch).
Also the Ray start-up time (ray.init). The ratios compare ours with the original.

    python bench/train_bench.py                       # 150 s per recipe, bundled data
    python bench/train_bench.py --budget-s 20 --max-train-samples 1000 --epochs 2   # smoke run

Results go to bench/results/train-<UTC time>.json. The machine's other load shows up in
the figures: rerun when it is quiet, and compare figures from the same run only.
"""
import argparse
import datetime
import json
import os
import tempfile
import time

from training.trainer import RECIPE, use_local_ray_env

use_local_ray_env()  # before Ray is imported: it reads them then

from bench import baseline_recipe, machine  # noqa: E402
from bench import ROOT  # noqa: E402
from training import checkpoints  # noqa: E402
from training.data import load_mnist  # noqa: E402
from training.trainer import run_training, start_ray  # noqa: E402


def first_reaching(history, acc):
    """Elapsed seconds at the first epoch with val_acc >= acc, or None."""
    return next((m["elapsed_s"] for m in history if m["val_acc"] >= acc), None)


def history_of(result, name):
    """The per-epoch metrics a recipe's last checkpoint holds."""
    if name == "ours":
        return checkpoints.load(result.checkpoint)["history"]
    with result.checkpoint.as_directory() as d, open(os.path.join(d, "history.json")) as f:
        return json.load(f)


def run_recipe(name, recipe, loop, data, args, storage):
    t0 = time.time()
    result = run_training(recipe, data, num_workers=args.num_workers, storage_path=storage,
                          run_name=f"bench-{name}", max_failures=0, keep_checkpoints=1, t0=t0, loop=loop)
    if result.error:
        raise SystemExit(f"{name}: training failed: {result.error}")
    history = history_of(result, name)
    first = history[0]
    return {
        "recipe": {k: v for k, v in recipe.items()},
        "epochs_run": len(history),
        "wall_s": time.time() - t0,
        "final_val_acc": history[-1]["val_acc"],
        "best_val_acc": max(m["val_acc"] for m in history),
        "time_to_98_s": first_reaching(history, 0.98),
        "time_to_99_s": first_reaching(history, 0.99),
        "images_per_s_per_worker": sum(m["images_per_s_per_worker"] for m in history) / len(history),
        "startup_overhead_s": first["elapsed_s"] - first["epoch_time_s"],
        "history": [{k: m[k] for k in ("epoch", "elapsed_s", "val_acc", "train_loss", "images_per_s_per_worker")}
                    for m in history],
    }


def ratio(a, b):
    return a / b if a is not None and b else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=150.0, help="time budget per recipe (default 150)")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--data", default="bundled")
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"], help="epochs of our recipe")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args()

    speed = machine.describe()  # before Ray starts, so nothing else is running
    d = load_mnist(args.data)
    n = args.max_train_samples or len(d.train_y)
    data = {"train_x": d.train_x[:n], "train_y": d.train_y[:n], "val_x": d.val_x, "val_y": d.val_y}
    ray_start_s = start_ray(args.num_workers, print)
    results = {}
    with tempfile.TemporaryDirectory() as storage:
        original = {**baseline_recipe.RECIPE, "time_budget_s": args.budget_s}
        for name, recipe, loop in (("ours", {"epochs": args.epochs}, None),
                                   ("original", original, baseline_recipe.train_loop_per_worker)):
            print(f"--- {name}: up to {args.budget_s:.0f}s", flush=True)
            results[name] = run_recipe(name, recipe, loop, data, args, storage)
    ours, orig = results["ours"], results["original"]
    err = lambda r: 1 - r["final_val_acc"]  # noqa: E731
    report = {
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**speed, "load_avg_1m_at_end": os.getloadavg()[0]},
        "data": {"source": d.source, "train": int(n), "val": int(len(d.val_y))},
        "budget_s": args.budget_s, "num_workers": args.num_workers, "ray_start_s": ray_start_s,
        "recipes": results,
        "ratios": {
            "original_error_over_ours": ratio(err(orig), err(ours)),
            "time_to_98_original_over_ours": ratio(orig["time_to_98_s"], ours["time_to_98_s"]),
            "time_to_99_original_over_ours": ratio(orig["time_to_99_s"], ours["time_to_99_s"]),
            "images_per_s_ours_over_original": ratio(ours["images_per_s_per_worker"], orig["images_per_s_per_worker"]),
        },
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"train-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)

    fmt = lambda v, unit="": "-" if v is None else f"{v:.1f}{unit}"  # noqa: E731
    print(f"\nRay start-up {ray_start_s:.1f}s; budget {args.budget_s:.0f}s per recipe; {n:,} training digits, "
          f"{args.num_workers} workers")
    print(f"{'recipe':10} {'epochs':>6} {'final val':>9} {'to 98%':>8} {'to 99%':>8} {'img/s/worker':>12} {'start-up':>8}")
    for name, r in results.items():
        print(f"{name:10} {r['epochs_run']:6d} {r['final_val_acc']:9.4f} {fmt(r['time_to_98_s'], 's'):>8} "
              f"{fmt(r['time_to_99_s'], 's'):>8} {r['images_per_s_per_worker']:12.0f} {r['startup_overhead_s']:7.1f}s")
    print("ratios: " + ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in report["ratios"].items()))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
