"""The training report written into the run directory: metrics.json, learning curves, confusion matrix.

    <run dir>/report/metrics.json          per-epoch metrics, final metrics, confusion matrix
    <run dir>/report/learning_curves.png   train loss, validation loss and accuracy per epoch
    <run dir>/report/confusion_matrix.png  validation confusion matrix of the exported model
    <run dir>/report/real_confusion_matrix.png   the same on the real-drawings holdout (with --feedback)

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
    ax2.plot(epochs, [100 * m["val_acc"] for m in history], marker="o", color="tab:green", label="MNIST validation")
    real = [m for m in history if "real_acc" in m]
    if real:
        ax2.plot([m["epoch"] for m in real], [100 * m["real_acc"] for m in real], marker="o", color="tab:purple",
                 label="real drawings (held-out writers)")
        ax2.legend()
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    lowest = min(100 * min(m["val_acc"], m.get("real_acc", 1.0)) for m in history)
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


def write_report(run_uri, history, summary, confusion, real_confusion=None):
    """Write the report under ``<run_uri>/report``; returns the report directory path/URI.
    ``real_confusion`` is the confusion matrix on the real-drawings holdout, if there is one."""
    store = open_store(run_uri)
    report = {"epochs": history, "summary": summary, "confusion_matrix": confusion.tolist()}
    files = {
        "learning_curves.png": _png(plot_learning_curves(history)),
        "confusion_matrix.png": _png(plot_confusion(confusion, f"validation, accuracy {summary['val_acc']:.2%}")),
    }
    if real_confusion is not None:
        report["real_confusion_matrix"] = real_confusion.tolist()
        files["real_confusion_matrix.png"] = _png(plot_confusion(
            real_confusion, f"real drawings, accuracy {summary['real_accuracy']:.2%}"))
    files["metrics.json"] = json.dumps(report, indent=2).encode()
    for name, data in files.items():
        store.put(f"report/{name}", data)
    return f"{store.uri}/report"
