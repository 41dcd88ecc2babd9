"""The infra/ scripts: shellcheck, and what --dry-run prints.

A dry run must print the exact commands and run none of them: gcloud, kubectl and
helm are replaced on PATH by tripwires that record any call, so the dry runs also
prove they need none of those tools installed. The idempotency checks run the
scripts for real against a fake gcloud that answers "exists" or "not found"; the
RayJob scripts run for real against a kubectl whose `kustomize` is the real one and
whose `apply` keeps what it was given.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import yaml

import k8s_helpers as k8s

pytestmark = pytest.mark.slow  # runs the infra scripts, kustomize and shellcheck

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


# What a dry run of each script is given beyond --dry-run (rollout.sh needs a command).
DRY_RUN_ARGS = {"rollout.sh": ["status"]}


@pytest.mark.parametrize("script", SCRIPTS)
def test_dry_run_runs_nothing(script, fake_tools):
    out, calls = run_script(script, ["--dry-run", *DRY_RUN_ARGS.get(script, [])], fake_tools)
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
        f"gcloud storage buckets create gs://{CONFIG['FEEDBACK_BUCKET']} --project {p} --location {r}",
        f"--member serviceAccount:digitdraw-trainer@{p}.iam.gserviceaccount.com --role roles/storage.objectUser",
        f"--member serviceAccount:digitdraw-server@{p}.iam.gserviceaccount.com --role roles/storage.objectViewer",
        f"--role roles/iam.workloadIdentityUser --member 'serviceAccount:{p}.svc.id.goog[{ns}/digitdraw-trainer]'",
        f"--role roles/iam.workloadIdentityUser --member 'serviceAccount:{p}.svc.id.goog[{ns}/digitdraw-server]'",
        "helm upgrade --install kuberay-operator kuberay/kuberay-operator --version 1.7.0",
        "--set 'featureGates[0].name=RayCronJob' --set 'featureGates[0].enabled=true'",
        "kubectl apply -f https://github.com/knative/serving/releases/download/knative-v1.23.0/serving-crds.yaml",
        "kubectl apply -f https://github.com/knative/serving/releases/download/knative-v1.23.0/serving-core.yaml",
        "kubectl apply -f https://github.com/knative/net-kourier/releases/download/knative-v1.23.0/kourier.yaml",
        "ingress-class\":\"kourier.ingress.networking.knative.dev",
        "kubectl patch service/kourier --namespace kourier-system --type merge --patch "
        "'{\"spec\":{\"externalTrafficPolicy\":\"Local\"}}'",
        "knative-v1.23.0/serving-default-domain.yaml",
        f"--patch-file {INFRA}/knative-features.yaml",
        f"gcloud artifacts repositories create {CONFIG['AR_REPO']} --repository-format docker --location {r}",
        f"gcloud builds submit {ROOT} --project {p} --region {r} --config {INFRA}/cloudbuild.yaml",
        f"_REGISTRY={r}-docker.pkg.dev/{p}/{CONFIG['AR_REPO']},_IMAGE_TAG={CONFIG['IMAGE_TAG']}",
        "| kubectl apply -l 'app.kubernetes.io/component notin (serving,review)' -f -",
        "kubectl get rayjob digitdraw-train-",
        f"kubectl kustomize {INFRA}/overlays/gke | {ROOT}/.venv/bin/python {INFRA}/ksvc.py stable "
        "| kubectl apply -l 'app.kubernetes.io/component notin (training,review)' -f -",
        f"kubectl wait ksvc digitdraw --namespace {ns} --for condition=Ready",
        f"kubectl get ksvc digitdraw --namespace {ns} -o 'jsonpath={{.status.url}}",
        f"kubectl kustomize {INFRA}/overlays/gke | kubectl apply -l 'app.kubernetes.io/component=review' -f -",
    ]
    for text in expected:
        assert text in cmds, f"missing from the dry run: {text}\n---\n{cmds}"
    # In order: cluster, storage, operators, images, training, serving, the review page.
    order = [cmds.index(t) for t in ("create-auto", "buckets create", "helm upgrade", "builds submit",
                                     "notin (serving,review)", "notin (training,review)", "component=review")]
    assert "review/expose" not in cmds, "the review page is exposed only by deploy-review.sh --expose"
    assert order == sorted(order)


def test_pinned_versions_match_the_schemas_the_tests_use():
    with open(os.path.join(INFRA, "lib.sh")) as f:
        lib = f.read()
    assert "KUBERAY_VERSION=1.7.0\n" in lib and "KNATIVE_VERSION=1.23.0\n" in lib
    notes = os.path.join(k8s.schemas_dir(), "NOTES.md")
    if os.path.exists(notes):
        text = open(notes).read()
        assert "**v1.7.0**" in text and "knative-v1.23.0" in text


def test_the_selectors_split_the_overlay_between_training_serving_and_the_review_page():
    """train.sh applies component notin (serving,review), deploy-service.sh component notin
    (training,review), deploy-review.sh component=review."""
    for overlay in k8s.OVERLAYS:
        docs = k8s.render(overlay)
        comp = {(d["kind"], d["metadata"]["name"]): d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
                for d in docs}
        training = {k for k, v in comp.items() if v not in ("serving", "review")}
        serving = {k for k, v in comp.items() if v not in ("training", "review")}
        review = {k for k, v in comp.items() if v == "review"}
        assert {("Deployment", "digitdraw-review"), ("Service", "digitdraw-review"),
                ("ServiceAccount", "digitdraw-review"), ("BackendConfig", "digitdraw-review")} == review
        assert not review & (training | serving)
        assert ("RayJob", "digitdraw-train") in training - serving
        assert ("ServiceAccount", "digitdraw-trainer") in training - serving
        assert ("Service", "digitdraw") in serving - training
        assert ("ServiceAccount", "digitdraw-server") in serving - training
        assert {("RayCronJob", "digitdraw-retrain-nightly"), ("ConfigMap", "digitdraw-ray")} <= training - serving
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
                 f"kubectl delete ingress digitdraw-review --namespace {CONFIG['NAMESPACE']} --ignore-not-found --wait",
                 f"gcloud compute addresses delete digitdraw-review --global --project {CONFIG['PROJECT_ID']}",
                 f"gcloud iam service-accounts delete digitdraw-review@{CONFIG['PROJECT_ID']}.iam.gserviceaccount.com",
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
    for dockerfile in ("training/Dockerfile", "service/Dockerfile", "training/review/Dockerfile"):
        assert dockerfile in text and os.path.exists(os.path.join(ROOT, dockerfile))
    built = set(re.findall(r"\$\{_REGISTRY\}/([a-z-]+):\$\{_IMAGE_TAG\}", text))
    used = set()
    for overlay in k8s.OVERLAYS:
        docs = k8s.render(overlay)
        (job,) = k8s.find(docs, "RayJob")
        (svc,) = k8s.find(docs, "Service", "serving.knative.dev")
        images = [c["image"] for _, pod in k8s.ray_pods(job) for c in pod["containers"]]
        images += [c["image"] for c in svc["spec"]["template"]["spec"]["containers"]]
        images += [c["image"] for d in k8s.find(docs, "Deployment") for c in d["spec"]["template"]["spec"]["containers"]]
        used |= {i.rsplit("/", 1)[1].split(":")[0] for i in images}
    assert used == built == {"digitdraw-training", "digitdraw-training-gpu", "digitdraw-service", "digitdraw-review"}
    assert set(cb["substitutions"]) == {"_REGISTRY", "_IMAGE_TAG", "_WITH_GPU"}


def test_storage_is_least_privilege(fake_tools):
    """The server may only read models and only create feedback records; the trainer
    writes models and only reads feedback; the review page only reads feedback and creates
    decisions (neither role may overwrite or delete), and has nothing on the model bucket."""
    out, calls = run_script("setup-storage.sh", ["--dry-run"], fake_tools)
    assert out.returncode == 0 and not calls, out.stderr
    p, b, fb = CONFIG["PROJECT_ID"], CONFIG["BUCKET"], CONFIG["FEEDBACK_BUCKET"]
    assert fb != b
    grants = set()
    for cmd in commands(out.stdout):
        words = shlex.split(cmd)
        if words[:4] == ["gcloud", "storage", "buckets", "add-iam-policy-binding"]:
            member = words[words.index("--member") + 1].split(":")[1].split("@")[0]
            grants.add((words[4], member, words[words.index("--role") + 1]))
    assert grants == {
        (f"gs://{b}", "digitdraw-trainer", "roles/storage.objectUser"),
        (f"gs://{b}", "digitdraw-server", "roles/storage.objectViewer"),
        (f"gs://{fb}", "digitdraw-server", "roles/storage.objectCreator"),
        (f"gs://{fb}", "digitdraw-trainer", "roles/storage.objectViewer"),
        (f"gs://{fb}", "digitdraw-review", "roles/storage.objectViewer"),
        (f"gs://{fb}", "digitdraw-review", "roles/storage.objectCreator"),
    }
    assert f"--member 'serviceAccount:{p}.svc.id.goog[{CONFIG['NAMESPACE']}/digitdraw-review]'" in out.stdout
    assert f"gcloud storage buckets create gs://{fb} --project {p}" in out.stdout


def test_deploy_review_keeps_the_page_inside_the_cluster_unless_exposed(fake_tools):
    out, calls = run_script("deploy-review.sh", ["--dry-run"], fake_tools)
    assert out.returncode == 0 and not calls, out.stderr
    ns = CONFIG["NAMESPACE"]
    assert commands(out.stdout) == [
        f"kubectl create namespace {ns}",
        f"kubectl kustomize {INFRA}/overlays/gke | kubectl apply -l 'app.kubernetes.io/component=review' -f -",
        f"kubectl rollout status deployment digitdraw-review --namespace {ns} --timeout 300s"]
    assert "refuses every request until" in out.stdout


def test_deploy_review_expose_puts_iap_in_front_and_sets_the_audience(fake_tools):
    out, calls = run_script("deploy-review.sh", ["--dry-run", "--expose"], fake_tools)
    assert out.returncode == 0 and not calls, out.stderr
    cmds = commands(out.stdout)
    p, ns = CONFIG["PROJECT_ID"], CONFIG["NAMESPACE"]
    for text in (f"gcloud services enable iap.googleapis.com --project {p}",
                 f"gcloud compute addresses create digitdraw-review --global --project {p}",
                 f"kubectl kustomize {ROOT}/review/expose | kubectl apply -l 'app.kubernetes.io/component=review' -f -",
                 f"gcloud compute backend-services list --global --project {p} --filter 'name~-{ns}-digitdraw-review-80-'",
                 f"gcloud projects describe {p} --format 'value(projectNumber)'",
                 f"kubectl rollout restart deployment digitdraw-review --namespace {ns}"):
        assert any(text in c for c in cmds), f"missing: {text}\n" + "\n".join(cmds)
    grants = [c for c in cmds if c.startswith("gcloud iap web add-iam-policy-binding")]
    assert [shlex.split(c)[shlex.split(c).index("--member") + 1] for c in grants] == [
        f"user:{r}" for r in CONFIG["REVIEWERS"].split(",")]
    assert all("--role roles/iap.httpsResourceAccessor" in c for c in grants)
    (audience,) = [c for c in cmds if "kubectl create configmap digitdraw-review-iap" in c]
    assert "REVIEW_IAP_AUDIENCE=/projects/<project number>/global/backendServices/<its id>" in audience
    order = [next(i for i, c in enumerate(cmds) if t in c) for t in (
        "review/expose", "iap web add-iam-policy-binding", "create configmap", "rollout restart")]
    assert order == sorted(order)
    out, _ = run_script("deploy-review.sh", ["--dry-run", "--exposed"], fake_tools)
    assert out.returncode == 2 and "unknown option --exposed" in out.stderr


def test_teardown_deletes_both_buckets_unless_kept(fake_tools):
    out, _ = run_script("teardown.sh", ["--dry-run"], fake_tools)
    cmds = commands(out.stdout)
    for bucket in (CONFIG["BUCKET"], CONFIG["FEEDBACK_BUCKET"]):
        assert f"gcloud storage rm --recursive gs://{bucket} --project {CONFIG['PROJECT_ID']}" in cmds
    assert f"kubectl delete raycronjob,rayjob --all --namespace {CONFIG['NAMESPACE']} --ignore-not-found" in cmds
    out, _ = run_script("teardown.sh", ["--dry-run", "--keep-bucket"], fake_tools)
    assert "gcloud storage rm" not in out.stdout


# A kubectl whose kustomize is the real one, whose apply keeps what it was given in
# $APPLIED, and whose other calls answer from $ANSWERS (lines "text<TAB>output": the
# first line whose text is part of the call; a call that none matches fails).
KUBECTL = """#!/bin/bash
line=$(printf '%q ' kubectl "$@"); printf '%s\n' "$line" >> "$CALLS"  # one write: piped calls run at once
case "$1" in
  kustomize) exec /usr/bin/kubectl "$@" ;;
  apply) cat >> "$APPLIED"; echo --- >> "$APPLIED"; exit 0 ;;
esac
while IFS=$'\\t' read -r pattern answer; do
  if [[ "$*" == *"$pattern"* ]]; then printf '%b' "$answer"; exit 0; fi
done < "$ANSWERS"
exit 1
"""


@pytest.fixture
def cluster(tmp_path):
    """Run a script against the kubectl above; returns (result, calls, applied documents)."""
    if shutil.which("kubectl", path="/usr/bin") is None:
        pytest.skip("kubectl is not installed; it renders the kustomize overlays")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "kubectl").write_text(KUBECTL)
    (bindir / "kubectl").chmod(0o755)

    def run(script, args, answers):
        files = {name: tmp_path / name for name in ("calls", "applied", "answers")}
        files["calls"].write_text("")
        files["applied"].write_text("")
        files["answers"].write_text("".join(f"{k}\t{v}\n".replace("\n", "\\n", v.count("\n")) for k, v in answers.items()))
        env = dict(os.environ, PATH=f"{bindir}:/usr/bin:/bin", CALLS=str(files["calls"]),
                   APPLIED=str(files["applied"]), ANSWERS=str(files["answers"]), VENV_PYTHON=sys.executable)
        out = subprocess.run(["bash", os.path.join(INFRA, script), *args], capture_output=True, text=True, env=env,
                             timeout=120, input="")
        applied = [d for d in yaml.safe_load_all(files["applied"].read_text()) if d]
        return out, files["calls"].read_text().splitlines(), applied

    return run


FINISHED = {"get namespace": "", "get rayjob --namespace digitdraw -o jsonpath=": "digitdraw-train-20261201-000000 Complete\n",
            "-o jsonpath={.status.jobDeploymentStatus}": "Complete", "logs ": "driver log\n"}


@pytest.mark.parametrize("script, prefix", [("train.sh", "digitdraw-train-"), ("retrain.sh", "digitdraw-retrain-")])
def test_each_training_is_a_new_rayjob_from_the_template(script, prefix, cluster):
    out, calls, applied = cluster(script, [], FINISHED)
    assert out.returncode == 0, out.stdout + out.stderr
    docs = k8s.render("gke")
    (template,) = k8s.find(docs, "RayJob")
    (cron,) = k8s.find(docs, "RayCronJob")
    # kubectl applies only the training side of what kustomize prints.
    assert [shlex.split(c) for c in calls if c.startswith("kubectl apply ")] == [
        ["kubectl", "apply", "-l", "app.kubernetes.io/component notin (serving,review)", "-f", "-"]]
    applied = [d for d in applied
               if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") not in ("serving", "review")]
    (job,) = k8s.find(applied, "RayJob")
    assert re.fullmatch(prefix + r"\d{8}-\d{6}", job["metadata"]["name"]), job["metadata"]["name"]
    assert job["metadata"]["labels"] == template["metadata"]["labels"]
    # train.sh trains from scratch; retrain.sh runs tonight's job now: feedback, warm start.
    assert job["spec"] == (template["spec"] if script == "train.sh" else cron["spec"]["jobTemplate"])
    assert {(d["kind"], d["metadata"]["name"]) for d in applied} == {
        ("Namespace", CONFIG["NAMESPACE"]), ("ServiceAccount", "digitdraw-trainer"), ("ConfigMap", "digitdraw-ray"),
        ("PersistentVolumeClaim", "digitdraw-shared"), ("RayCronJob", "digitdraw-retrain-nightly"),
        ("RayJob", job["metadata"]["name"])}
    assert k8s.rayjob_rules(job) == [] and k8s.deployment_rules(applied) == []
    if k8s.missing_schemas_reason() is None:
        assert k8s.CRDSchemas().errors(job) == []
    assert f"RayJob {job['metadata']['name']}: Complete" in out.stdout and "driver log" in out.stdout


@pytest.mark.parametrize("script", ["train.sh", "retrain.sh"])
def test_a_running_training_is_waited_for_not_doubled(script, cluster):
    running = dict(FINISHED, **{"get rayjob --namespace digitdraw -o jsonpath=":
                                "digitdraw-train-20261201-000000 Complete\ndigitdraw-retrain-nightly-29432160 Running\n"})
    out, calls, applied = cluster(script, [], running)
    assert out.returncode == 0, out.stdout + out.stderr
    assert applied == [] and "RayJob digitdraw-retrain-nightly-29432160 is still running; waiting for it" in out.stdout
    assert "kubectl logs --namespace digitdraw -l job-name=digitdraw-retrain-nightly-29432160" in "\n".join(calls)


def test_retrain_dry_run(fake_tools):
    out, calls = run_script("retrain.sh", ["--dry-run", "--overlay", "gpu"], fake_tools)
    assert out.returncode == 0 and not calls, out.stderr
    name = re.search(r"RayJob (digitdraw-retrain-\d{8}-\d{6}) from the nightly job template", out.stdout).group(1)
    assert "#   replacements:" in out.stdout and "fieldPath: spec.jobTemplate" in out.stdout
    assert re.search(r"^\+ kubectl kustomize \S+ \| kubectl apply -l 'app.kubernetes.io/component notin "
                     r"\(serving,review\)' -f -$", out.stdout, re.M)
    assert f"+ kubectl logs --namespace {CONFIG['NAMESPACE']} -l job-name={name} --tail 40" in out.stdout
    out, _ = run_script("retrain.sh", ["--dry-run", "--no-wait"], fake_tools)
    assert "follow it: kubectl get rayjob digitdraw-retrain-" in out.stdout and "kubectl logs --namespace" not in out.stdout


# ---------------------------------------------------------------------------------------
# infra/rollout.sh


def rollout_dry_run(fake_tools, *args):
    out, calls = run_script("rollout.sh", ["--dry-run", *args], fake_tools)
    assert not calls
    return out


def test_rollout_canary_dry_run(fake_tools):
    out = rollout_dry_run(fake_tools, "canary", "20261202T000028Z-a6785ae6", "--percent", "10")
    assert out.returncode == 0, out.stderr
    ns, py, ov = CONFIG["NAMESPACE"], f"{ROOT}/.venv/bin/python", f"{INFRA}/overlays/gke"
    assert commands(out.stdout) == [
        f"kubectl kustomize {ov} | {py} {INFRA}/ksvc.py stable-name",
        f"kubectl get ksvc digitdraw --namespace {ns} -o 'jsonpath={{.status.traffic[*].revisionName}}'",
        f"kubectl kustomize {ov} | {py} {INFRA}/ksvc.py canary 20261202T000028Z-a6785ae6 10 | kubectl apply -f -",
        f"kubectl wait ksvc digitdraw --namespace {ns} --timeout 60s --for=jsonpath='{{.status.observedGeneration}}'="
        f"\"$(kubectl get ksvc digitdraw --namespace {ns} -o jsonpath='{{.metadata.generation}}')\" && "
        f"kubectl wait ksvc digitdraw --namespace {ns} --for condition=Ready --timeout 300s",
        f"kubectl get ksvc digitdraw --namespace {ns} -o 'jsonpath={{.status.traffic[?(@.tag==\"candidate\")].url}}{{\"\\n\"}}'",
    ]
    assert f"http://candidate-digitdraw.{ns}.<domain>" in out.stdout


@pytest.mark.parametrize("args, expect", [
    (["canary", "20261202T000028Z-a6785ae6"], "--percent, a whole number from 0 to 100"),
    (["canary", "20261202T000028Z-a6785ae6", "--percent", "150"], "from 0 to 100"),
    (["canary", "--percent", "5"], "needs a model version"),
    (["rollback"], "give a command: canary VERSION --percent P, status, promote or abort"),
    ([], "give a command"),
    (["--overlay", "gke-pvc", "status"], "overlay gke-pvc keeps the models on the cluster's PVC"),
    (["abort", "now"], "abort takes no arguments"),
])
def test_rollout_refuses_bad_arguments(fake_tools, args, expect):
    out = rollout_dry_run(fake_tools, *args)
    assert out.returncode == 2 and expect in out.stderr, out.stdout + out.stderr


def test_rollout_status_dry_run_prints_the_split_and_the_promql(fake_tools):
    out = rollout_dry_run(fake_tools, "status", "--window", "30m")
    assert out.returncode == 0, out.stderr
    cmds = "\n".join(commands(out.stdout))
    assert f"kubectl get ksvc digitdraw --namespace {CONFIG['NAMESPACE']} -o 'jsonpath={{range .status.traffic[*]}}" in cmds
    assert "kubectl get revisions" in cmds and 'MODEL_VERSION:.spec.containers[0].env[?(@.name=="MODEL_VERSION")].value' in cmds
    promql = re.findall(r"^# ([^:]+): (.+ by .+)$", out.stdout, re.M)
    assert [name for name, _ in promql] == ["requests per second", "5xx share of requests",
                                            "mean top-class confidence", "corrections per prediction"]
    for _, q in promql:
        assert "by (model_version)" in q and "[30m]" in q
    assert 'status=~"5.."' in promql[1][1] and "digitdraw_prediction_confidence_sum" in promql[2][1]
    assert "digitdraw_corrections_total" in promql[3][1] and "digitdraw_predictions_total" in promql[3][1]
    assert "PROMETHEUS_URL is not set" in out.stdout


def test_rollout_promote_and_abort_dry_runs(fake_tools):
    ns, py = CONFIG["NAMESPACE"], f"{ROOT}/.venv/bin/python"
    pinned = f"kubectl kustomize {INFRA}/overlays/gke | {py} {INFRA}/ksvc.py pinned | kubectl apply -f -"
    out = rollout_dry_run(fake_tools, "promote", "--reason", "10% for a day, fewer corrections")
    assert out.returncode == 0, out.stderr
    cmds = commands(out.stdout)
    assert cmds[0] == f"kubectl get ksvc digitdraw --namespace {ns} -o 'jsonpath={{.spec.traffic[?(@.tag==\"candidate\")].revisionName}}'"
    assert cmds[2] == (f"cd {ROOT} && {py} -m training.registry --store gs://{CONFIG['BUCKET']} promote "
                       "'<candidate MODEL_VERSION>' --reason '10% for a day, fewer corrections'")
    assert cmds[3] == pinned and cmds[4].startswith("kubectl wait ksvc digitdraw")
    out = rollout_dry_run(fake_tools, "abort")
    assert out.returncode == 0 and commands(out.stdout)[0] == pinned


CANARY_ANSWERS = {"jsonpath={.status.traffic[*].revisionName}": "STABLE", "wait ksvc": "",
                  "jsonpath={.metadata.generation}": "2",
                  "jsonpath={.status.traffic[?(@.tag==\"candidate\")].url}": "http://candidate-digitdraw.digitdraw.1.2.3.4.sslip.io\n"}


def test_rollout_canary_applies_what_the_schemas_and_webhook_accept(cluster):
    stable = subprocess.run(f"kubectl kustomize {INFRA}/overlays/gke | {sys.executable} {INFRA}/ksvc.py stable-name",
                            shell=True, capture_output=True, text=True, check=True).stdout.strip()
    answers = dict(CANARY_ANSWERS)
    answers["jsonpath={.status.traffic[*].revisionName}"] = stable
    out, calls, applied = cluster("rollout.sh", ["canary", "20261202T000028Z-a6785ae6", "--percent", "25"], answers)
    assert out.returncode == 0, out.stdout + out.stderr
    (svc,) = applied
    assert [t["percent"] for t in svc["spec"]["traffic"]] == [75, 25]
    assert svc["spec"]["traffic"][0]["revisionName"] == stable
    assert k8s.knative_rules(svc, {}) == []
    if k8s.missing_schemas_reason() is None:
        assert k8s.CRDSchemas().errors(svc) == []
    assert "http://candidate-digitdraw.digitdraw.1.2.3.4.sslip.io" in out.stdout
    # Run again: the same manifest, so kubectl apply changes nothing.
    _, _, again = cluster("rollout.sh", ["canary", "20261202T000028Z-a6785ae6", "--percent", "25"], answers)
    assert again == applied


def test_rollout_canary_refuses_when_the_stable_revision_is_not_serving(cluster):
    out, calls, applied = cluster("rollout.sh", ["canary", "20261202T000028Z-a6785ae6", "--percent", "25"],
                                  CANARY_ANSWERS)
    assert out.returncode == 1 and applied == []
    assert "is not serving (the Service routes to: STABLE)" in out.stderr and "infra/deploy-service.sh" in out.stderr


def test_rollout_promote_without_a_candidate_changes_nothing(cluster):
    out, calls, applied = cluster("rollout.sh", ["promote"], {"get ksvc digitdraw": ""})
    assert out.returncode == 0 and "nothing to promote" in out.stdout
    assert applied == [] and not [c for c in calls if "registry" in c]


class FakePrometheus(BaseHTTPRequestHandler):
    """Prometheus's /api/v1/query: two model versions for any query; 400 for 'bad'."""
    queries = []

    def do_GET(self):
        from urllib.parse import parse_qs, urlparse

        url = urlparse(self.path)
        query = parse_qs(url.query).get("query", [""])[0]
        FakePrometheus.queries.append((url.path, query))
        if "bad" in query:
            body, code = {"status": "error", "errorType": "bad_data", "error": "parse error"}, 400
        else:
            body, code = {"status": "success", "data": {"resultType": "vector", "result": [
                {"metric": {"model_version": "20261202T000028Z-a6785ae6"}, "value": [1764633600.0, "0.0125"]},
                {"metric": {"model_version": "20261130T120000Z-0badc0de"}, "value": [1764633600.0, "3.5"]}]}}, 200
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def prometheus():
    server = HTTPServer(("127.0.0.1", 0), FakePrometheus)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakePrometheus.queries = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_promql_prints_one_line_per_model_version(prometheus):
    out = subprocess.run([sys.executable, os.path.join(INFRA, "promql.py"), prometheus, "sum by (model_version) (x)"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["  model_version=20261130T120000Z-0badc0de  3.5",
                                       "  model_version=20261202T000028Z-a6785ae6  0.0125"]
    assert FakePrometheus.queries == [("/api/v1/query", "sum by (model_version) (x)")]
    out = subprocess.run([sys.executable, os.path.join(INFRA, "promql.py"), prometheus, "bad"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 1 and "answered 400" in out.stderr and "parse error" in out.stderr
    out = subprocess.run([sys.executable, os.path.join(INFRA, "promql.py"), "http://127.0.0.1:9", "x"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "cannot query Prometheus at http://127.0.0.1:9" in out.stderr


def test_rollout_status_queries_prometheus(cluster, prometheus, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_URL", prometheus)
    out, calls, _ = cluster("rollout.sh", ["status"], {"get ": "90%  digitdraw-latest-1\n"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert [q for _, q in FakePrometheus.queries] == re.findall(r"^# [^:]+: (.+ by .+)$", out.stdout, re.M)
    assert out.stdout.count("model_version=20261202T000028Z-a6785ae6") == 4
