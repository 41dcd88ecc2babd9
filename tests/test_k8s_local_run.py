"""The deployment, run on this machine from its own manifests.

Nothing here writes a command down: the RayJob's entrypoint, its head's environment
and its submitter's environment, and the Knative container's command, args, env and
readiness path are all read from the rendered gke overlay. Only values change, where
a laptop is not a cluster:

- a real Ray head on 127.0.0.1 (`ray start --head`, Jobs API on), and the entrypoint
  submitted to it with `ray job submit`, as KubeRay's submitter does;
- STORAGE_PATH and DATA_DIR (the PVC) point at a temporary directory;
- the gs:// URIs stay as written, and the bucket they name lives in fake-gcs-server
  (STORAGE_EMULATOR_HOST);
- a short run: bundled data, 2 workers on 2 CPUs, few epochs;
- PORT is set, as Knative sets it.

Then the service must load the model training published to that bucket, become ready
on its readiness-probe path, and read real held-out digits correctly.
"""
import base64
import io
import json
import os
import shlex
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


def env_dict(container):
    env = {}
    for e in container.get("env", []):
        assert "valueFrom" not in e, f"{e['name']}: env from references cannot be run locally"
        env[e["name"]] = e.get("value", "")
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
    (svc,) = k8s.find(docs, "Service", "serving.knative.dev")
    return job, svc


@pytest.fixture(scope="module")
def ray_head(manifests, tmp_path_factory):
    """A real Ray head on 127.0.0.1, started with the RayJob head container's environment."""
    if shutil.which("ray", path=VENV_BIN) is None:
        pytest.skip("the ray CLI is not installed in the venv (pip install 'ray[default]')")
    job, _ = manifests
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    work = tmp_path_factory.mktemp("rayjob")
    overrides = dict(LOCAL_TRAINING, STORAGE_PATH=str(work / "pvc" / "runs"), DATA_DIR=str(work / "pvc" / "data"))
    env = local_env(env_dict(head["template"]["spec"]["containers"][0]), overrides)
    # Ray's sockets live in its temp dir; a short path keeps them under the 107-byte limit.
    temp_dir = tempfile.mkdtemp(prefix="ray-k8s-", dir="/tmp")
    port, dash = free_port(), free_port()
    log = open(work / "ray-head.log", "wb")
    # --block keeps `ray start` in the foreground, so we own it and can stop it. Every
    # port is a free one: other Ray clusters on this machine hold the defaults.
    ports = {p: free_port() for p in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                       "metrics-export-port", "runtime-env-agent-port", "ray-client-server-port")}
    cmd = [os.path.join(VENV_BIN, "ray"), "start", "--head", "--block", f"--port={port}",
           "--node-ip-address=127.0.0.1", "--num-cpus=2", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", "--include-dashboard=true", f"--temp-dir={temp_dir}",
           *[f"--{k}={v}" for k, v in ports.items()],
           *[f"--{k}={v}" for k, v in head.get("rayStartParams", {}).items()
             if k not in ("dashboard-host", "num-cpus")]]  # the head's resources are ours here
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{dash}/api/version", timeout=90, proc=proc)
        yield {"address": f"http://127.0.0.1:{dash}", "work": work, "env": env}
    finally:
        kill_group(proc)
        kill_by_marker(temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def trained_from_rayjob(manifests, ray_head, fake_gcs):
    """Submit the RayJob's own entrypoint to the local head, like KubeRay's submitter."""
    job, svc = manifests
    head_env = ray_head["env"]
    for uri in (head_env["PUBLISH_URIS"], head_env["CHECKPOINT_MIRROR"]):
        fake_gcs.make_bucket(bucket_of(uri))
    submitter = job["spec"].get("submitterPodTemplate", {}).get("spec", {}).get("containers", [{}])[0]
    client_env = local_env(env_dict(submitter), {})
    entrypoint = shlex.split(job["spec"]["entrypoint"])
    cmd = [os.path.join(VENV_BIN, "ray"), "job", "submit", "--address", ray_head["address"], "--", *entrypoint]
    t = time.time()
    while True:
        result = subprocess.run(cmd, cwd=ROOT, env=client_env, capture_output=True, text=True, timeout=900)
        logs = result.stdout[-6000:] + result.stderr[-3000:]
        # The dashboard answers before the head's job agent is up; KubeRay's submitter
        # retries too (its Job's backoff).
        if "No available agent to submit job" not in logs or time.time() - t > 120:
            break
        time.sleep(2)
    assert result.returncode == 0, f"ray job submit -- {job['spec']['entrypoint']} failed:\n{logs}"
    print(f"RayJob entrypoint ran in {time.time() - t:.0f}s")
    return {"env": head_env, "logs": logs}


def test_rayjob_entrypoint_trains_checkpoints_and_publishes(trained_from_rayjob):
    """Checkpoints reach the PVC path and the GCS mirror; the model reaches the bucket."""
    from google.cloud import storage

    env = trained_from_rayjob["env"]
    run_dir = os.path.join(env["STORAGE_PATH"], env["RUN_NAME"])
    checkpoints = [d for _, dirs, _ in os.walk(run_dir) for d in dirs if d.startswith("checkpoint")]
    assert checkpoints, f"no checkpoint under {run_dir} (the PVC)"

    client = storage.Client(project="local")
    mirror_bucket, _, mirror_prefix = env["CHECKPOINT_MIRROR"][len("gs://"):].partition("/")
    mirrored = [b.name for b in client.list_blobs(mirror_bucket, prefix=f"{mirror_prefix}/{env['RUN_NAME']}".lstrip("/"))]
    assert mirrored, f"no checkpoint mirrored to {env['CHECKPOINT_MIRROR']}/{env['RUN_NAME']}"

    sys.path.insert(0, ROOT)
    from service.store import load_verified, open_store

    store = open_store(env["PUBLISH_URIS"].split(",")[0])
    pointer, _ = store.read_latest()
    onnx_bytes, meta = load_verified(store, pointer["version"])
    assert onnx_bytes and meta["version"] == pointer["version"]


def test_knative_container_serves_the_published_model(manifests, trained_from_rayjob, fake_gcs, tmp_path):
    _, svc = manifests
    (c,) = svc["spec"]["template"]["spec"]["containers"]
    env = env_dict(c)
    assert bucket_of(env["MODEL_URI"]) == bucket_of(trained_from_rayjob["env"]["PUBLISH_URIS"])
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
