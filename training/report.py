"""The training report written into the run directory: metrics.json, learning curves, confusion matrix.

    <run dir>/report/metrics.json          per-epoch metrics, final metrics, confusion matrix
    <run dir>/report/learning_curves.png   train loss, validation loss and accuracy per epoch
    <run dir>/report/confusion_matrix.png  validation confusion matrix of the exported model
    <run dir>/report/<set>_confusion_matrix.png  the same on each other held-out set (e.g. real)

The run directory may be local, a PVC or gs://; files are written through the store client.
"""
import io
import json

import matplotlib

matplotlib.use("Agg")  # no display on workers, pods or CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from service.store import open_store  # noqa: E402


def plot_learning_curves(history):
    epochs = [m["epoch"] for m in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [m["train_loss"] for m in history], marker="o", label="train loss (augmented, smoothed)")
    ax1.plot(epochs, [m["val_loss"] for m in history], marker="o", label="validation loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(epochs, [100 * m["val_acc"] for m in history], marker="o", label="MNIST validation")
    names = sorted({k[:-len("_acc")] for m in history for k in m if k.endswith("_acc") and k != "val_acc"})
    for name in names:
        scored = [m for m in history if f"{name}_acc" in m]
        ax2.plot([m["epoch"] for m in scored], [100 * m[f"{name}_acc"] for m in scored], marker="o", label=name)
    if names:
        ax2.legend()
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    lowest = min(100 * v for m in history for k, v in m.items() if k.endswith("_acc"))
    ax2.set_ylim(max(50.0, lowest - 1), 100)
    ax2.grid(alpha=0.3)
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def plot_confusion(cm, title):
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.imshow(np.log1p(cm), cmap="Blues")
    for t in range(cm.shape[0]):
        for p in range(cm.shape[1]):
            if cm[t, p]:
                ax.text(p, t, str(cm[t, p]), ha="center", va="center", fontsize=8,
                        color="white" if t == p else "black")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(run_uri, history, summary, confusion, confusions=None):
    """Write the report under ``<run_uri>/report``; returns the report directory path/URI.
    ``confusions`` maps each other held-out set's name to its confusion matrix, written as
    ``<name>_confusion_matrix`` beside the validation one."""
    store = open_store(run_uri)
    report = {"epochs": history, "summary": summary, "confusion_matrix": confusion.tolist()}
    files = {
        "learning_curves.png": _png(plot_learning_curves(history)),
        "confusion_matrix.png": _png(plot_confusion(confusion, f"validation, accuracy {summary['val_acc']:.2%}")),
    }
    for name, cm in (confusions or {}).items():
        report[f"{name}_confusion_matrix"] = cm.tolist()
        accuracy = np.trace(cm) / max(1, cm.sum())
        files[f"{name}_confusion_matrix.png"] = _png(plot_confusion(cm, f"{name}, accuracy {accuracy:.2%}"))
    files["metrics.json"] = json.dumps(report, indent=2).encode()
    for name, data in files.items():
        store.put(f"report/{name}", data)
    return f"{store.uri}/report"
