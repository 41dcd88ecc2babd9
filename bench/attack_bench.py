"""The attack on the correction loop, replayed: targeted style poison, review, and the retraining as deployed.

For each poison size (--sizes) and each reviewer (--reviewers), on a fresh copy of the
model store and a fresh feedback directory:

1. starts the service on the copy (``python -m service``, FEEDBACK_URI=<tmp>/feedback,
   FEEDBACK_RATE_LIMIT=0) and sends, through POST /feedback exactly as the page sends
   them, --honest honest corrections (bench/styles.py: the styles MNIST lacks and the
   other digits, by --train-writers writers, each under its own client id) and the
   poison: 1s with a flag (``POISON_STYLE``, written by other writers) labelled 7, under
   --attackers client ids, interleaved with the honest ones. Every record carries what
   the service read, as the page sends it;
2. triage (training/feedback/triage.py) over the store: where the attacker's clients rank;
3. a reviewer decides with the review CLI's decisions: ``triage`` rejects every client
   that triage marks suspicious and approves the rest; ``careless`` approves everything;
4. retrains as deployed (``python -m training --data bundled --feedback <tmp>/feedback
   --init-from latest --publish <copy>``, the default trust, approved, and RETRAIN_ARGS);
5. scores the model LATEST names before and after, and the candidate, on the same 28x28
   inputs the service made of other writers' writings (--eval-writers): the poisoned
   style, every style, the usual digits, and MNIST validation.

The drawings are rendered once, by the page's own pad.js and png.js in Chromium.

    python -m bench.attack_bench --model-uri model-store
    python -m bench.attack_bench --model-uri model-store --sizes 30,1000 --reviewers careless

Writes bench/results/attack-<UTC>.json (with the machine) and prints a summary: for every
scenario, whether LATEST moved to a model that reads the poisoned style worse (it must
never), and whether triage ranked the attacker's clients first.
"""
import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench import ROOT, machine
from bench.feedback_bench import load_mnist_sets, preview_pixels, send_correction
from bench.page import render_canvases
from bench.servers import service
from bench.styles import CORRECTION_ITEMS, EVAL_ITEMS, EVAL_SEED, TRAIN_SEED, drawings, read_drawings, sample, writers
from service.store import load_verified, open_store
from training.evaluate import predict
from training.feedback import decisions, records, triage

POISON_STYLE, POISON_LABEL = "1-flag", 7
ATTACK_SEED = 3                  # the writers of the poison: neither the honest nor the eval writers
RETRAIN_ARGS = ["--epochs", "2"]  # make retrain's; the nightly job trains longer on full MNIST
SIZES = [30, 100, 300, 1000]
REVIEWERS = ["triage", "careless"]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-uri", default=os.environ.get("MODEL_URI", os.path.join(ROOT, "model-store")),
                    help="the model store to copy (a directory with a checkpoint beside LATEST's model; env MODEL_URI)")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help=f"poison records (default {SIZES})")
    ap.add_argument("--reviewers", default=",".join(REVIEWERS), help=f"who reviews (default {REVIEWERS})")
    ap.add_argument("--attackers", type=int, default=3, help="client ids the poison is sent under (default 3)")
    ap.add_argument("--honest", type=int, default=1000, help="honest corrections (default 1000)")
    ap.add_argument("--train-writers", type=int, default=100, help="writers of the honest corrections (default 100)")
    ap.add_argument("--eval-writers", type=int, default=40, help="writers of the evaluation (default 40)")
    ap.add_argument("--retrain-args", default=" ".join(RETRAIN_ARGS),
                    help=f"training flags of each retraining (default {' '.join(RETRAIN_ARGS)!r})")
    ap.add_argument("--no-retrain", action="store_true", help="send and triage only")
    ap.add_argument("--out", default=None, help="result file (default bench/results/attack-<UTC>.json)")
    return ap.parse_args()


def poison(n, attackers):
    """``n`` writings of POISON_STYLE by other writers, labelled POISON_LABEL, spread over
    ``attackers`` client ids."""
    out = sample(writers(max(10, n // 10), ATTACK_SEED), [POISON_STYLE], n, seed=ATTACK_SEED)
    return [{**d, "label": POISON_LABEL, "writer": f"attacker-{k % attackers}", "poison": True}
            for k, d in enumerate(out)]


def send_all(url, items):
    """POST /feedback each (drawing, png, what the service read), in order; stop at a failure."""
    for drawing, png, read in items:
        status, answer = send_correction(url, drawing, png, read)
        if status not in (200, 201):
            sys.exit(f"error: POST {url}/feedback answered {status} {json.dumps(answer)[:300]}")


def rank(store, attacker_ids):
    """Triage of the store: the attacker clients' ranks (1 = most suspicious) and the top clients."""
    found = [e.as_triage() for e in records.entries(store) if not e.problem]
    scored = triage.triage(found)
    order = [s.key for s in scored.clients]
    flagged = [s.key for s in scored.clients if s.suspicious]
    return scored, {"attacker_ranks": sorted(order.index(a) + 1 for a in attacker_ids if a in order),
                    "attackers_first": set(order[:len(attacker_ids)]) == set(attacker_ids),
                    "suspicious": len(flagged), "honest_suspicious": len(set(flagged) - set(attacker_ids)),
                    "top": [s.as_dict() for s in scored.clients[:len(attacker_ids) + 3]]}


def review(store, reviewer, scored):
    """Decide as ``reviewer`` would: (approved, rejected) counts."""
    states = decisions.states(store)
    if reviewer == "careless":
        reject = set()
    else:
        reject = {i for s in scored.clients if s.suspicious for i in s.ids}
    approve = [i for i in states if i not in reject]
    decisions.decide(store, sorted(reject), decisions.REJECTED, "triage: a suspicious client", by="bench",
                     current=states)
    decisions.decide(store, approve, decisions.APPROVED, f"{reviewer} review", by="bench", current=states)
    return len(approve), len(reject)


def scores(model, eval_set, mnist):
    """Accuracy of an ONNX model on the eval inputs, per group, and on MNIST validation."""
    x, items, labels = eval_set
    read = predict(model, x)
    right = read == labels
    styled = np.array([not item.isdigit() for item in items])
    vx, vy = mnist["mnist_validation"]
    return {"poisoned_style": float(right[items == POISON_STYLE].mean()),
            "poisoned_style_read_as_7": float((read[items == POISON_STYLE] == POISON_LABEL).mean()),
            "styles": float(right[styled].mean()), "usual": float(right[~styled].mean()),
            "mnist_validation": float((predict(model, vx) == vy).mean())}


def retrain(store, feedback, runs, args, log_path):
    cmd = [sys.executable, "-m", "training", "--data", "bundled", "--feedback", feedback, "--init-from", "latest",
           "--publish", store, "--storage-path", runs, *shlex.split(args.retrain_args)]
    env = {k: v for k, v in os.environ.items() if k != "FEEDBACK_TRUST"}  # the deployed default: approved
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    with open(log_path) as f:
        lines = f.read().splitlines()
    if proc.returncode != 0:
        sys.exit(f"error: retraining exited with {proc.returncode}; its log: {log_path}\n" + "\n".join(lines[-30:]))
    return round(time.monotonic() - started, 1), cmd, lines


def scenario(args, size, reviewer, honest_items, poison_items, eval_set, mnist, tmp):
    work = tempfile.mkdtemp(prefix=f"{size}-{reviewer}-", dir=tmp)
    store, feedback, runs = (os.path.join(work, name) for name in ("model-store", "feedback", "runs"))
    shutil.copytree(args.model_uri, store)
    os.makedirs(feedback)
    rng = np.random.default_rng(size)
    items = honest_items + poison_items[:size]
    order = rng.permutation(len(items))
    server = service(store, FEEDBACK_URI=feedback, FEEDBACK_RATE_LIMIT="0").wait_ready()
    try:
        send_all(server.url, [items[k] for k in order])
    finally:
        server.stop()
    fb = open_store(feedback)
    attacker_ids = sorted({d["writer"] for d, _, _ in poison_items[:size]})
    scored, ranked = rank(fb, attacker_ids)
    result = {"size": size, "reviewer": reviewer, "attackers": attacker_ids, "triage": ranked}
    print(f"[{size} poison, {reviewer}] triage: attacker clients rank {ranked['attacker_ranks']}; "
          f"{ranked['suspicious']} clients suspicious, {ranked['honest_suspicious']} of them honest", flush=True)
    if args.no_retrain:
        return result
    approved, rejected = review(fb, reviewer, scored)
    poison_ids = {e.id for e in records.entries(fb) if e.get("client_id") in attacker_ids}
    states = decisions.states(fb)
    result["review"] = {"approved": approved, "rejected": rejected,
                        "poison_approved": sum(states[i] == decisions.APPROVED for i in poison_ids)}
    before_pointer, _ = open_store(store).read_latest()
    before_model, _ = load_verified(open_store(store), before_pointer["version"])
    wall_s, cmd, lines = retrain(store, feedback, runs, args, os.path.join(work, "retrain.log"))
    after_pointer, _ = open_store(store).read_latest()
    new = [v for v in open_store(store).list_versions() if v != before_pointer["version"]]
    candidate_model, meta = load_verified(open_store(store), new[-1])
    after_model, _ = load_verified(open_store(store), after_pointer["version"])
    before = scores(before_model, eval_set, mnist)
    latest = scores(after_model, eval_set, mnist)
    evaluation = meta["evaluation"]
    result.update({
        "retrain": {"wall_s": wall_s, "command": cmd[1:],
                    "feedback": [line for line in lines if line.startswith(("feedback:", "evalset:"))],
                    "gate": evaluation["reason"], "stopped_by": evaluation["stopped_by"],
                    "per_digit": evaluation["per_digit"],
                    "eval_set_count": meta["feedback"]["eval_count"]},
        "latest_moved": after_pointer["version"] != before_pointer["version"],
        "before": before, "candidate": scores(candidate_model, eval_set, mnist), "latest_after": latest,
        "poisoned_style_worse": latest["poisoned_style"] < before["poisoned_style"]})
    print(f"[{size} poison, {reviewer}] {approved} approved ({result['review']['poison_approved']} poison), "
          f"{rejected} rejected; retrained in {wall_s} s; LATEST {'moved' if result['latest_moved'] else 'kept'}: "
          f"poisoned style {100 * before['poisoned_style']:.1f}% -> {100 * latest['poisoned_style']:.1f}% "
          f"(candidate {100 * result['candidate']['poisoned_style']:.1f}%); gate: {evaluation['reason'][:160]}",
          flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return result


def main():
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = [int(s) for s in args.sizes.split(",")]
    reviewers = args.reviewers.split(",")
    if set(reviewers) - set(REVIEWERS):
        sys.exit(f"error: --reviewers {args.reviewers}: use {', '.join(REVIEWERS)}")
    pointer, _ = open_store(args.model_uri).read_latest()
    if pointer is None:
        sys.exit(f"error: no LATEST in {args.model_uri}; train one with `make train`")
    mnist = load_mnist_sets(None)
    host = machine.describe()
    honest = sample(writers(args.train_writers, TRAIN_SEED), CORRECTION_ITEMS, args.honest)
    bad = poison(max(sizes), args.attackers)
    eval_drawings = drawings(writers(args.eval_writers, EVAL_SEED), EVAL_ITEMS, 2)
    everything = honest + bad + eval_drawings
    print(f"rendering {len(honest)} honest corrections, {len(bad)} poison and {len(eval_drawings)} eval writings in "
          "Chromium", flush=True)
    pngs = render_canvases([{"strokes": d["strokes"], "width": d["width"]} for d in everything])
    tmp = tempfile.mkdtemp(prefix="attack-bench-")
    try:
        # What the champion reads in every drawing, as the page would send it with a correction.
        server = service(args.model_uri).wait_ready()
        try:
            read = read_drawings(server.url, everything, pngs)
        finally:
            server.stop()
        items = list(zip(everything, pngs, read))
        honest_items, poison_items = items[:len(honest)], items[len(honest):len(honest) + len(bad)]
        eval_records = read[len(honest) + len(bad):]
        eval_set = (preview_pixels(eval_records), np.array([d["item"] for d in eval_drawings]),
                    np.array([d["label"] for d in eval_drawings]))
        results = [scenario(args, size, reviewer, honest_items, poison_items, eval_set, mnist, tmp)
                   for size in sizes for reviewer in reviewers]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    host["load_average_at_end"] = os.getloadavg()
    out = args.out or os.path.join(ROOT, "bench", "results", time.strftime("attack-%Y%m%dT%H%M%SZ.json",
                                                                           time.gmtime()))
    summary = {"latest_never_worse_on_poisoned_style": all(not r.get("poisoned_style_worse") for r in results),
               "triage_ranks_attackers_first": all(r["triage"]["attackers_first"] for r in results)}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"machine": host, "source_store": args.model_uri, "champion": pointer["version"],
                   "honest": len(honest), "honest_writers": args.train_writers, "attackers": args.attackers,
                   "poison_style": POISON_STYLE, "poison_label": POISON_LABEL,
                   "retrain_args": shlex.split(args.retrain_args), "eval_writings": len(eval_drawings),
                   "summary": summary, "scenarios": results}, f, indent=1)
    print("summary: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in summary.items()))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
