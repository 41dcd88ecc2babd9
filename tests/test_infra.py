"""The infra/ scripts: shellcheck, and what --dry-run prints.

A dry run must print the exact commands and run none of them: gcloud, kubectl and
helm are replaced on PATH by tripwires that record any call, so the dry runs also
prove they need none of those tools installed. The idempotency checks run the
scripts for real against a fake gcloud that answers "exists" or "not found".
"""
import os
import re
import shutil
import subprocess

import pytest
import yaml

import k8s_helpers as k8s

ROOT = k8s.ROOT
INFRA = os.path.join(ROOT, "infra")
SCRIPTS = sorted(f for f in os.listdir(INFRA) if f.endswith(".sh") and f != "lib.sh")
CONFIG = dict(line.split("=", 1) for line in open(os.path.join(INFRA, "config", "config.env")).read().splitlines()
              if line and not line.startswith("#"))

# An external tool that records its arguments; `describe`/`get` answer with EXISTS.
FAKE_TOOL = """#!/bin/bash
printf '%q ' "$(basename "$0")" "$@" >> "$CALLS"; echo >> "$CALLS"
case " $* " in
  *" describe "*|*" get "*) exit "$EXISTS" ;;
esac
exit "${TRIPWIRE:-0}"
"""


@pytest.fixture
def fake_tools(tmp_path):
    """A bin dir whose gcloud, kubectl and helm only record their calls."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("gcloud", "kubectl", "helm"):
        path = bindir / tool
        path.write_text(FAKE_TOOL)
        path.chmod(0o755)
    calls = tmp_path / "calls"
    calls.write_text("")
    return bindir, calls


def run_script(script, args, fake_tools, exists=1, infra=INFRA, tripwire=99):
    bindir, calls = fake_tools
    calls.write_text("")
    env = dict(os.environ, PATH=f"{bindir}:/usr/bin:/bin", CALLS=str(calls), EXISTS=str(exists), TRIPWIRE=str(tripwire))
    out = subprocess.run(["bash", os.path.join(infra, script), *args], capture_output=True, text=True, env=env,
                         timeout=60, input="")
    return out, calls.read_text().splitlines()


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck; `make browser` does)")
    scripts = [os.path.join(INFRA, f) for f in os.listdir(INFRA) if f.endswith(".sh")]
    out = subprocess.run(["shellcheck", "-x", *scripts], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_strict_and_documented(script, fake_tools):
    with open(os.path.join(INFRA, script)) as f:
        text = f.read()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(os.path.join(INFRA, script), os.X_OK)
    out, calls = run_script(script, ["--help"], fake_tools)
    assert out.returncode == 0 and "usage: infra/" + script in out.stdout and not calls


@pytest.mark.parametrize("script", SCRIPTS)
def test_dry_run_runs_nothing(script, fake_tools):
    out, calls = run_script(script, ["--dry-run"], fake_tools)
    assert out.returncode == 0, out.stdout + out.stderr
    assert calls == [], f"--dry-run called {calls}"
    assert "# dry run" in out.stdout
    assert re.search(r"^\+ (gcloud|kubectl|helm) ", out.stdout, re.M), "a dry run prints the commands"


def commands(stdout):
    return [line[2:] for line in stdout.splitlines() if line.startswith("+ ")]


def test_dry_run_of_everything_prints_the_pinned_versions_and_steps(fake_tools):
    out, calls = run_script("up.sh", ["--dry-run"], fake_tools)
    assert out.returncode == 0 and not calls, out.stderr
    cmds = "\n".join(commands(out.stdout))
    p, r, b, ns = CONFIG["PROJECT_ID"], CONFIG["REGION"], CONFIG["BUCKET"], CONFIG["NAMESPACE"]
    expected = [
        f"gcloud container clusters create-auto {CONFIG['CLUSTER']} --region {r} --project {p}",
        f"gcloud storage buckets create gs://{b} --project {p} --location {r} --uniform-bucket-level-access",
        f"--member serviceAccount:digitdraw-trainer@{p}.iam.gserviceaccount.com --role roles/storage.objectUser",
        f"--member serviceAccount:digitdraw-server@{p}.iam.gserviceaccount.com --role roles/storage.objectViewer",
        f"--role roles/iam.workloadIdentityUser --member 'serviceAccount:{p}.svc.id.goog[{ns}/digitdraw-trainer]'",
        f"--role roles/iam.workloadIdentityUser --member 'serviceAccount:{p}.svc.id.goog[{ns}/digitdraw-server]'",
        "helm upgrade --install kuberay-operator kuberay/kuberay-operator --version 1.7.0",
        "kubectl apply -f https://github.com/knative/serving/releases/download/knative-v1.23.0/serving-crds.yaml",
        "kubectl apply -f https://github.com/knative/serving/releases/download/knative-v1.23.0/serving-core.yaml",
        "kubectl apply -f https://github.com/knative/net-kourier/releases/download/knative-v1.23.0/kourier.yaml",
        "ingress-class\":\"kourier.ingress.networking.knative.dev",
        "knative-v1.23.0/serving-default-domain.yaml",
        f"--patch-file {INFRA}/knative-features.yaml",
        f"gcloud artifacts repositories create {CONFIG['AR_REPO']} --repository-format docker --location {r}",
        f"gcloud builds submit {ROOT} --project {p} --region {r} --config {INFRA}/cloudbuild.yaml",
        f"_REGISTRY={r}-docker.pkg.dev/{p}/{CONFIG['AR_REPO']},_IMAGE_TAG={CONFIG['IMAGE_TAG']}",
        f"kubectl kustomize {INFRA}/overlays/gke | kubectl apply -l 'app.kubernetes.io/component!=serving' -f -",
        f"kubectl get rayjob digitdraw-train --namespace {ns}",
        f"kubectl kustomize {INFRA}/overlays/gke | kubectl apply -l 'app.kubernetes.io/component!=training' -f -",
        f"kubectl wait ksvc digitdraw --namespace {ns} --for condition=Ready",
        f"kubectl get ksvc digitdraw --namespace {ns} -o 'jsonpath={{.status.url}}",
    ]
    for text in expected:
        assert text in cmds, f"missing from the dry run: {text}\n---\n{cmds}"
    # In order: cluster, storage, operators, images, training, serving.
    order = [cmds.index(t) for t in ("create-auto", "buckets create", "helm upgrade", "builds submit",
                                     "component!=serving", "component!=training")]
    assert order == sorted(order)


def test_pinned_versions_match_the_schemas_the_tests_use():
    with open(os.path.join(INFRA, "lib.sh")) as f:
        lib = f.read()
    assert "KUBERAY_VERSION=1.7.0\n" in lib and "KNATIVE_VERSION=1.23.0\n" in lib
    notes = os.path.join(k8s.schemas_dir(), "NOTES.md")
    if os.path.exists(notes):
        text = open(notes).read()
        assert "**v1.7.0**" in text and "knative-v1.23.0" in text


def test_the_selectors_split_the_overlay_between_training_and_serving():
    """train.sh applies component!=serving, deploy-service.sh component!=training."""
    for overlay in k8s.OVERLAYS:
        docs = k8s.render(overlay)
        comp = {(d["kind"], d["metadata"]["name"]): d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
                for d in docs}
        training = {k for k, v in comp.items() if v != "serving"}
        serving = {k for k, v in comp.items() if v != "training"}
        assert ("RayJob", "digitdraw-train") in training - serving
        assert ("ServiceAccount", "digitdraw-trainer") in training - serving
        assert ("Service", "digitdraw") in serving - training
        assert ("ServiceAccount", "digitdraw-server") in serving - training
        assert {("Namespace", CONFIG["NAMESPACE"]), ("PersistentVolumeClaim", "digitdraw-shared")} <= training & serving


def test_standard_cluster_with_a_gpu_pool(fake_tools, tmp_path):
    """CLUSTER_MODE=standard: Workload Identity, the CSI drivers and a GPU pool that scales from zero."""
    infra = tmp_path / "infra"
    shutil.copytree(INFRA, infra)
    cfg = (infra / "config" / "config.env").read_text().replace("CLUSTER_MODE=autopilot", "CLUSTER_MODE=standard")
    (infra / "config" / "config.env").write_text(cfg)
    out, calls = run_script("create-cluster.sh", ["--dry-run"], fake_tools, infra=str(infra))
    assert out.returncode == 0 and not calls, out.stderr
    cmds = "\n".join(commands(out.stdout))
    p = CONFIG["PROJECT_ID"]
    assert f"gcloud container clusters create {CONFIG['CLUSTER']} " in cmds
    assert f"--workload-pool {p}.svc.id.goog" in cmds
    assert "--addons GcpFilestoreCsiDriver,GcsFuseCsiDriver" in cmds
    assert (f"gcloud container node-pools create gpu --cluster {CONFIG['CLUSTER']}" in cmds
            and f"--accelerator type={CONFIG['GPU_TYPE']},count=1,gpu-driver-version=default" in cmds
            and "--num-nodes 0 --enable-autoscaling --min-nodes 0" in cmds)


@pytest.mark.parametrize("script", ["create-cluster.sh", "setup-storage.sh", "build-images.sh"])
def test_rerunning_creates_nothing_that_exists(script, fake_tools):
    """Run for real against a fake gcloud: with everything present no create is issued;
    with nothing present each create is issued once."""
    out, calls = run_script(script, [], fake_tools, exists=0, tripwire=0)
    assert out.returncode == 0, out.stdout + out.stderr
    assert calls and not [c for c in calls if re.search(r" create(-auto)? ", c)], calls
    out, calls = run_script(script, [], fake_tools, exists=1, tripwire=0)
    assert out.returncode == 0, out.stdout + out.stderr
    creates = [c for c in calls if re.search(r" create(-auto)? ", c)]
    assert creates and len(creates) == len(set(creates))
    # What it ran is what a dry run prints.
    dry, _ = run_script(script, ["--dry-run"], fake_tools)
    printed = [shlex_words(c) for c in commands(dry.stdout)]
    assert [shlex_words(c) for c in calls if not re.search(r" (describe|get) ", c)] == printed


def shlex_words(line):
    import shlex

    return shlex.split(line)


def test_teardown_deletes_everything_and_can_keep_the_bucket(fake_tools):
    out, calls = run_script("teardown.sh", ["--dry-run"], fake_tools)
    assert out.returncode == 0 and not calls
    cmds = "\n".join(commands(out.stdout))
    for text in (f"kubectl delete namespace {CONFIG['NAMESPACE']}", "helm uninstall kuberay-operator",
                 f"gcloud container clusters delete {CONFIG['CLUSTER']}", f"gcloud storage rm --recursive gs://{CONFIG['BUCKET']}",
                 f"gcloud artifacts repositories delete {CONFIG['AR_REPO']}"):
        assert text in cmds
    out, _ = run_script("teardown.sh", ["--dry-run", "--keep-bucket"], fake_tools)
    assert "gcloud storage rm" not in out.stdout and "clusters delete" in out.stdout
    # Without --yes or a terminal answer it deletes nothing.
    out, calls = run_script("teardown.sh", [], fake_tools, exists=0, tripwire=0)
    assert out.returncode != 0 and not [c for c in calls if " delete" in c or " rm " in c]


def test_validate_live_dry_runs_every_overlay_on_the_server(fake_tools):
    out, calls = run_script("validate-live.sh", ["--dry-run"], fake_tools)
    assert out.returncode == 0 and not calls
    for overlay in k8s.OVERLAYS:
        assert (f"kubectl kustomize {INFRA}/overlays/{overlay} | kubectl apply --dry-run=server --validate=strict -f -"
                in out.stdout)


def test_unknown_overlay_is_refused(fake_tools):
    out, calls = run_script("train.sh", ["--dry-run", "--overlay", "gkee"], fake_tools)
    assert out.returncode == 2 and "no overlay infra/overlays/gkee" in out.stderr and not calls


def test_cloudbuild_builds_the_images_the_manifests_run():
    with open(os.path.join(INFRA, "cloudbuild.yaml")) as f:
        cb = yaml.safe_load(f)
    text = yaml.safe_dump(cb)
    for dockerfile in ("training/Dockerfile", "service/Dockerfile"):
        assert dockerfile in text and os.path.exists(os.path.join(ROOT, dockerfile))
    built = set(re.findall(r"\$\{_REGISTRY\}/([a-z-]+):\$\{_IMAGE_TAG\}", text))
    used = set()
    for overlay in k8s.OVERLAYS:
        docs = k8s.render(overlay)
        (job,) = k8s.find(docs, "RayJob")
        (svc,) = k8s.find(docs, "Service", "serving.knative.dev")
        images = [c["image"] for _, pod in k8s.ray_pods(job) for c in pod["containers"]]
        images += [c["image"] for c in svc["spec"]["template"]["spec"]["containers"]]
        used |= {i.rsplit("/", 1)[1].split(":")[0] for i in images}
    assert used == built == {"digitdraw-training", "digitdraw-training-gpu", "digitdraw-service"}
    assert set(cb["substitutions"]) == {"_REGISTRY", "_IMAGE_TAG", "_WITH_GPU"}
