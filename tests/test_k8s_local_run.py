"""The deployment, run on this machine from its own manifests.

Nothing here writes a command down: the RayJob's entrypoint, its head's environment
and its submitter's environment (the Ray settings from their ConfigMap too), the
nightly RayCronJob's job template, and the Knative container's command, args, env
and readiness path are all read from the rendered gke overlay. Only values change,
where a laptop is not a cluster:

- a real Ray head on 127.0.0.1 (`ray start --head`, Jobs API on) for each job, and the
  entrypoint submitted to it as KubeRay's submitter does: `bash -ce "ray job submit
  ... -- <entrypoint>"` with the submitter's environment, where RAYJOB_NAME (the
  downward API's view of the pod label KubeRay sets) is the RayJob's name;
- STORAGE_PATH and DATA_DIR (the PVC) point at a temporary directory;
- the gs:// URIs stay as written, and the buckets they name live in fake-gcs-server
  (STORAGE_EMULATOR_HOST), the feedback bucket with a few corrections in it;
- a short run: bundled data, 2 workers on 2 CPUs, few epochs;
- PORT is set, as Knative sets it.

Then the service must load the model training published to that bucket, become ready
on its readiness-probe path, and read real held-out digits correctly; and the nightly
job must train a new run from that model and the corrections.
"""
import base64
import contextlib
import datetime
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

import k8s_helpers as k8s
from conftest import ROOT, free_port, wait_http

pytestmark = pytest.mark.slow

VENV_BIN = os.path.dirname(sys.executable)
SAMPLE = os.path.join(ROOT, "training", "sample")

# Values that differ on one machine; everything else comes from the manifests.
LOCAL_TRAINING = {
    "TRAIN_DATA": "bundled",   # no internet here
    "NUM_WORKERS": "2",        # 2 CPUs
    "EPOCHS": "2",
    "MAX_TRAIN_SAMPLES": "6000",
    # One machine: keep Ray on loopback (the manifest's "1" is for a multi-node cluster).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def env_dict(container, docs, rayjob_name=None):
    """The container's environment as the pod gets it: envFrom from the overlay's
    ConfigMaps, and the RayJob's name where the downward API reads KubeRay's label."""
    env = {}
    for name, value in k8s.env_of(container, docs).items():
        if isinstance(value, dict):
            assert value == {"fieldRef": {"fieldPath": k8s.CR_NAME_LABEL}} and rayjob_name, \
                f"{name}: only the RayJob's name can be read from the pod here, not {value}"
            value = rayjob_name
        env[name] = value
    return env


def bucket_of(uri):
    assert uri.startswith("gs://"), uri
    return uri[len("gs://"):].split("/", 1)[0]


def local_env(manifest_env, overrides):
    """This process's environment (STORAGE_EMULATOR_HOST, ...), then the manifest's, then overrides.

    The image puts its Python and its code first (PATH, PYTHONPATH in the Dockerfiles);
    here that is the venv and the checkout.
    """
    env = dict(os.environ)
    env.update(manifest_env)
    env.update(overrides)
    env["PATH"] = VENV_BIN + os.pathsep + os.environ.get("PATH", "")
    env["PYTHONPATH"] = ROOT
    return env


def kill_group(proc, timeout=5):
    """Stop a process we started in its own session, and everything it started."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill_by_marker(marker):
    """Kill the processes whose command line names ``marker`` (our Ray temp dir) by pid:
    Ray daemonizes some of them out of our process group; never `ray stop`, which would
    stop every Ray cluster on this shared machine."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if marker.encode() in cmdline:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def held_out_digits():
    """One canvas-style PNG per class from the bundled sample's validation split (its last
    1,000 digits, never trained on): dark ink on white, 280x280 like the web canvas."""
    sys.path.insert(0, ROOT)
    from training.idx import read_idx

    images = read_idx(os.path.join(SAMPLE, "train-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(SAMPLE, "train-labels-idx1-ubyte.gz"))
    images, labels = images[-1000:], labels[-1000:]
    out = []
    for digit in range(10):
        i = int(np.flatnonzero(labels == digit)[0])
        canvas = Image.fromarray(255 - images[i].astype(np.uint8)).resize((280, 280), Image.BILINEAR)
        buf = io.BytesIO()
        canvas.convert("RGB").save(buf, format="PNG")
        out.append((digit, buf.getvalue()))
    return out


@pytest.fixture(scope="module")
def manifests():
    docs = k8s.render("gke")
    (job,) = k8s.find(docs, "RayJob", "ray.io")
    (cron,) = k8s.find(docs, "RayCronJob", "ray.io")
    (svc,) = k8s.find(docs, "Service", "serving.knative.dev")
    return {"docs": docs, "job": job, "cron": cron, "svc": svc}


@contextlib.contextmanager
def ray_head(job, docs, work):
    """A real Ray head on 127.0.0.1, started with the job's head container environment."""
    if shutil.which("ray", path=VENV_BIN) is None:
        pytest.skip("the ray CLI is not installed in the venv (pip install 'ray[default]')")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    overrides = dict(LOCAL_TRAINING, STORAGE_PATH=str(work / "pvc" / "runs"), DATA_DIR=str(work / "pvc" / "data"))
    env = local_env(env_dict(head["template"]["spec"]["containers"][0], docs), overrides)
    # Ray's sockets live in its temp dir; a short path keeps them under the 107-byte limit.
    temp_dir = tempfile.mkdtemp(prefix="ray-k8s-", dir="/tmp")
    dash = free_port()
    log = open(work / f"ray-head-{dash}.log", "wb")
    # --block keeps `ray start` in the foreground, so we own it and can stop it. Every
    # port is a free one: other Ray clusters on this machine hold the defaults.
    ports = {p: free_port() for p in ("port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                       "metrics-export-port", "runtime-env-agent-port", "ray-client-server-port")}
    cmd = [os.path.join(VENV_BIN, "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=2",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
           f"--temp-dir={temp_dir}", *[f"--{k}={v}" for k, v in ports.items()],
           *[f"--{k}={v}" for k, v in head.get("rayStartParams", {}).items()
             if k not in ("dashboard-host", "num-cpus")]]  # the head's resources are ours here
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{dash}/api/version", timeout=90, proc=proc)
        yield {"address": f"http://127.0.0.1:{dash}", "env": env}
    finally:
        kill_group(proc)
        kill_by_marker(temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def run_like_kuberay(job, rayjob_name, docs, work):
    """Run the job's entrypoint on a Ray head of its own, the way KubeRay's submitter does."""
    submitter = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    client_env = local_env(env_dict(submitter, docs, rayjob_name), {})
    with ray_head(job, docs, work) as head:
        # KubeRay joins its `ray job submit ... --` and the entrypoint into one bash -ce
        # command, so the entrypoint's $VARS expand here, in the submitter's environment.
        script = f"ray job submit --address {head['address']} -- {job['spec']['entrypoint']}"
        t = time.time()
        while True:
            result = subprocess.run(["bash", "-ce", script], cwd=ROOT, env=client_env, capture_output=True, text=True,
                                    timeout=900)
            logs = result.stdout[-8000:] + result.stderr[-3000:]
            # The dashboard answers before the head's job agent is up; KubeRay's submitter
            # retries too (its Job's backoff).
            if "No available agent to submit job" not in logs or time.time() - t > 120:
                break
            time.sleep(2)
    assert result.returncode == 0, f"{script} failed:\n{logs}"
    print(f"{rayjob_name}: entrypoint ran in {time.time() - t:.0f}s")
    return {"env": head["env"], "logs": logs, "run_name": rayjob_name}


@pytest.fixture(scope="module")
def trained_from_rayjob(manifests, fake_gcs, tmp_path_factory):
    """The RayJob's entrypoint on a local head: trains, checkpoints and publishes."""
    job, docs = manifests["job"], manifests["docs"]
    head = env_dict(job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0], docs)
    for uri in (head["PUBLISH_URIS"], head["CHECKPOINT_MIRROR"]):
        fake_gcs.make_bucket(bucket_of(uri))
    return run_like_kuberay(job, job["metadata"]["name"], docs, tmp_path_factory.mktemp("rayjob"))


def test_rayjob_entrypoint_trains_checkpoints_and_publishes(trained_from_rayjob):
    """Checkpoints reach the PVC path and the GCS mirror; the model reaches the bucket."""
    from google.cloud import storage

    env, run_name = trained_from_rayjob["env"], trained_from_rayjob["run_name"]
    assert run_name == "digitdraw-train", "the run is named after the RayJob"
    run_dir = os.path.join(env["STORAGE_PATH"], run_name)
    checkpoints = [d for _, dirs, _ in os.walk(run_dir) for d in dirs if d.startswith("checkpoint")]
    assert checkpoints, f"no checkpoint under {run_dir} (the PVC)"

    client = storage.Client(project="local")
    mirror_bucket, _, mirror_prefix = env["CHECKPOINT_MIRROR"][len("gs://"):].partition("/")
    mirrored = [b.name for b in client.list_blobs(mirror_bucket, prefix=f"{mirror_prefix}/{run_name}".lstrip("/"))]
    assert mirrored, f"no checkpoint mirrored to {env['CHECKPOINT_MIRROR']}/{run_name}"

    sys.path.insert(0, ROOT)
    from service.store import load_verified, open_store

    store = open_store(env["PUBLISH_URIS"].split(",")[0])
    pointer, _ = store.read_latest()
    onnx_bytes, meta = load_verified(store, pointer["version"])
    assert onnx_bytes and meta["version"] == pointer["version"]
    assert pointer["by"] == run_name, "DIGITDRAW_ACTOR names the run in LATEST's history"


def test_knative_container_serves_the_published_model(manifests, trained_from_rayjob, fake_gcs, tmp_path):
    svc = manifests["svc"]
    (c,) = svc["spec"]["template"]["spec"]["containers"]
    env = env_dict(c, manifests["docs"])
    assert bucket_of(env["MODEL_URI"]) == bucket_of(trained_from_rayjob["env"]["PUBLISH_URIS"])
    fake_gcs.make_bucket(bucket_of(env["FEEDBACK_URI"]))
    port = free_port()
    # Knative sets PORT; HOST keeps this run on loopback.
    run_env = local_env(env, {"PORT": str(port), "HOST": "127.0.0.1"})
    cmd = c.get("command", []) + c.get("args", [])
    log = open(tmp_path / "service.log", "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + c["readinessProbe"]["httpGet"]["path"], timeout=90, proc=proc)
        wait_http(base + c["livenessProbe"]["httpGet"]["path"], timeout=10, proc=proc)

        sys.path.insert(0, ROOT)
        from service.store import open_store

        latest, _ = open_store(env["MODEL_URI"]).read_latest()
        right = 0
        for digit, png in held_out_digits():
            req = urllib.request.Request(base + "/predict", data=png, headers={"Content-Type": "image/png"})
            with urllib.request.urlopen(req, timeout=30) as r:
                body = json.loads(r.read())
            assert body["model_version"] == latest["version"]
            assert len(body["probabilities"]) == 10 and abs(sum(body["probabilities"]) - 1) < 1e-3
            right += body["digit"] == digit
        # A short run on 6,000 digits; the full recipe is judged by the training tests.
        assert right >= 8, f"only {right}/10 held-out digits read correctly"
        # The JSON form the web canvas sends, too.
        req = urllib.request.Request(base + "/predict", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"image": "data:image/png;base64," +
                                                      base64.b64encode(held_out_digits()[3][1]).decode()}).encode())
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.loads(r.read())["digit"] in range(10)
    finally:
        kill_group(proc)
        log.close()
        if proc.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
            print((tmp_path / "service.log").read_text()[-3000:])


def feedback_records(count=4):
    """Corrections as the service stores them (service/contract.py): held-out digits of
    the bundled sample, each with the label a person gave it and what the model said."""
    sys.path.insert(0, ROOT)
    from training.idx import read_idx

    images = read_idx(os.path.join(SAMPLE, "train-images-idx3-ubyte.gz"))[-count:]
    labels = read_idx(os.path.join(SAMPLE, "train-labels-idx1-ubyte.gz"))[-count:]
    now = datetime.datetime.now(datetime.timezone.utc)
    for pixels, label in zip(images, labels):
        raw = pixels.astype(np.uint8).tobytes()
        yield {"id": hashlib.sha256(raw).hexdigest(), "pixels": base64.b64encode(raw).decode(), "label": int(label),
               "predicted": (int(label) + 1) % 10, "model_version": None, "client_id": "local-test",
               "created_at": f"{now:%Y-%m-%dT%H:%M:%S.%f}"[:-3] + "Z", "image_sha256": hashlib.sha256(b"png" + raw).hexdigest()}


@pytest.fixture(scope="module")
def retrained_from_raycronjob(manifests, trained_from_rayjob, fake_gcs, tmp_path_factory):
    """One night's RayJob: the RayCronJob's job template under the name KubeRay gives a
    tick's RayJob, run like the RayJob, with corrections waiting in the feedback bucket,
    all but one approved."""
    from google.cloud import storage

    cron, docs = manifests["cron"], manifests["docs"]
    job = {"metadata": cron["metadata"], "spec": cron["spec"]["jobTemplate"]}
    head = env_dict(job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0], docs)
    bucket, _, prefix = head["FEEDBACK_URI"][len("gs://"):].partition("/")
    fake_gcs.make_bucket(bucket)
    client = storage.Client(project="local").bucket(bucket)
    records = list(feedback_records())
    for r in records:
        key = "/".join(filter(None, [prefix, f"records/{r['id']}.json"]))
        client.blob(key).upload_from_string(json.dumps(r), content_type="application/json")
        client.blob("/".join(filter(None, [prefix, f"days/{r['created_at'][:10]}/{r['id']}"]))).upload_from_string(b"")
    rejected = records[-1]
    client.blob("/".join(filter(None, [prefix, f"rejected/{rejected['id']}.json"]))).upload_from_string(
        json.dumps({"id": rejected["id"], "reason": "not a digit", "by": "reviewer"}))
    # The others a reviewer approved: the nightly job trains on approved corrections only.
    from service.contract import decision_key

    at = datetime.datetime.now(datetime.timezone.utc)
    for r in records[:-1]:
        client.blob("/".join(filter(None, [prefix, decision_key(r["id"], at, "approved")]))).upload_from_string(
            json.dumps({"id": r["id"], "decision": "approved", "by": "reviewer", "at": f"{at:%Y-%m-%dT%H:%M:%SZ}",
                        "reason": "looked at them"}))
    # KubeRay names each tick's RayJob <raycronjob>-<minutes since 1970 of the tick>.
    name = f"{cron['metadata']['name']}-{int(time.time() // 60)}"
    # The PVC the first run used, as the nightly job shares the RayJob's claim.
    work = trained_from_rayjob["env"]["STORAGE_PATH"].rsplit("/pvc/", 1)[0]
    done = run_like_kuberay(job, name, docs, pathlib.Path(work))
    done["records"] = records
    return done


def test_raycronjob_retrains_from_latest_with_the_feedback(trained_from_rayjob, retrained_from_raycronjob):
    sys.path.insert(0, ROOT)
    from service.store import load_verified, open_store

    env, name, logs = (retrained_from_raycronjob[k] for k in ("env", "run_name", "logs"))
    assert name != trained_from_rayjob["run_name"], "a new run, not the first one resumed"
    run_dir = os.path.join(env["STORAGE_PATH"], name)
    assert [d for _, dirs, _ in os.walk(run_dir) for d in dirs if d.startswith("checkpoint")], run_dir
    store = open_store(env["PUBLISH_URIS"].split(",")[0])
    (first,) = store.list_versions()[:1]  # the RayJob's, LATEST when the night began
    # Where the data came from, as the driver says: the warm start from LATEST's version
    # (a line naming it and an init or warm start; the promotion gate names it too) and
    # the feedback store.
    lines = logs.splitlines()
    assert [line for line in lines if first in line and re.search(r"(?i)init|warm", line)], \
        f"no warm start from LATEST ({first}) in the driver's log:\n{logs[-3000:]}"
    assert [line for line in lines if env["FEEDBACK_URI"] in line], \
        f"the feedback store is not in the driver's log:\n{logs[-3000:]}"
    assert "4 records: 3 approved, 0 pending, 1 rejected; trusting the approved ones: 3" in logs, logs[-3000:]
    # Other data and other starting weights: a model of its own (the same weights would
    # be the same version, training is deterministic).
    versions = store.list_versions()
    assert len(versions) == 2, f"the nightly run published no model of its own: {versions}"
    _, meta = load_verified(store, versions[-1])
    assert meta["version"] == versions[-1]
    pointer, _ = store.read_latest()
    if pointer["version"] == versions[-1]:  # it passed the promotion gate
        assert pointer["by"] == name
