"""Every overlay, rendered by `kubectl kustomize`, against the official schemas and rules.

CRD objects (RayJob, RayCronJob, Knative Service) are validated against the KubeRay v1.7.0 and
Knative Serving 1.23 CRD schemas in ../shared/k8s-schemas, closed so that unknown
fields fail, with defaults filled first; core objects with kubernetes-validate
--strict. Then the operator and webhook rules the schemas do not encode, and this
project's own. Without ../shared the schema tests skip and say why; `make
validate` checks the same overlays against a live cluster instead.
"""
import copy
import os
import re
import subprocess
import sys

import pytest
import yaml

import k8s_helpers as k8s

pytestmark = pytest.mark.slow  # renders every overlay with kubectl kustomize

SKIP_REASON = k8s.missing_schemas_reason()
needs_schemas = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")

with open(os.path.join(k8s.ROOT, "infra", "knative-features.yaml")) as f:
    FEATURES = yaml.safe_load(f)["data"]


@pytest.fixture(scope="module")
def rendered():
    return {overlay: k8s.render(overlay) for overlay in k8s.OVERLAYS}


@pytest.fixture(scope="module")
def crds():
    if SKIP_REASON:
        pytest.skip(SKIP_REASON)
    return k8s.CRDSchemas()


def test_overlays_exist_and_render(rendered):
    assert {"gke", "gpu", "gke-pvc"} <= set(rendered)
    for overlay, docs in rendered.items():
        kinds = sorted(d["kind"] for d in docs)
        assert kinds.count("RayJob") == kinds.count("RayCronJob") == 1, (overlay, kinds)
        assert len(k8s.find(docs, "Service", "serving.knative.dev")) == 1, (overlay, kinds)
        assert {"Namespace", "PersistentVolumeClaim", "ServiceAccount", "ConfigMap"} <= set(kinds), (overlay, kinds)


@needs_schemas
@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_crd_objects_match_official_schemas(overlay, rendered, crds):
    custom = [d for d in rendered[overlay] if crds.knows(d)]
    assert {d["kind"] for d in custom} == {"RayJob", "RayCronJob", "Service"}, "the CRD objects have schemas"
    for doc in custom:
        assert crds.errors(doc) == [], f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_core_objects_pass_kubernetes_validate_strict(overlay, rendered):
    core = [d for d in rendered[overlay] if "." not in d["apiVersion"].split("/")[0] or d["apiVersion"] == "v1"]
    assert core
    for doc in core:
        assert k8s.core_kind_errors(doc) == [], f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"


def test_kubernetes_validate_cli_on_a_rendered_overlay(rendered, tmp_path):
    """The CLI itself, on the whole file: passes core kinds, warns (exit 0) on the CRD kinds."""
    path = tmp_path / "gke.yaml"
    path.write_text(yaml.safe_dump_all(rendered["gke"]))
    cli = os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
    out = subprocess.run([cli, "--strict", "-k", k8s.KUBERNETES_VERSION, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "passed for resource persistentvolumeclaim/digitdraw-shared" in out.stdout
    # A misspelt core field fails it.
    bad = [copy.deepcopy(d) for d in rendered["gke"] if d["kind"] == "PersistentVolumeClaim"]
    bad[0]["spec"]["accesModes"] = bad[0]["spec"].pop("accessModes")
    path.write_text(yaml.safe_dump_all(bad))
    out = subprocess.run([cli, "--strict", "-k", k8s.KUBERNETES_VERSION, str(path)], capture_output=True, text=True)
    assert out.returncode != 0 and "accesModes" in out.stdout


@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_operator_and_webhook_rules(overlay, rendered):
    docs = rendered[overlay]
    for job in k8s.find(docs, "RayJob", "ray.io"):
        assert k8s.rayjob_rules(job) == []
    for cron in k8s.find(docs, "RayCronJob", "ray.io"):
        assert k8s.raycronjob_rules(cron) == []
    for svc in k8s.find(docs, "Service", "serving.knative.dev"):
        assert k8s.knative_rules(svc, FEATURES) == []


@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_deployment_rules(overlay, rendered):
    assert k8s.deployment_rules(rendered[overlay]) == []


def test_settings_from_config_env_are_filled_in_once(rendered):
    """config.env's values reach every field that needs them, in every overlay."""
    cfg = dict(line.split("=", 1) for line in open(os.path.join(k8s.ROOT, "infra", "config", "config.env")).read().split("\n")
               if line and not line.startswith("#"))
    registry = f"{cfg['REGION']}-docker.pkg.dev/{cfg['PROJECT_ID']}/{cfg['AR_REPO']}/"
    for overlay, docs in rendered.items():
        jobs = [job for _, job in k8s.ray_jobs(docs)]
        assert len(jobs) == 2, "the RayJob and the RayCronJob's job template"
        (svc,) = k8s.find(docs, "Service", "serving.knative.dev")
        images = [c["image"] for job in jobs for _, pod in k8s.ray_pods(job) for c in pod["containers"]]
        images += [c["image"] for c in svc["spec"]["template"]["spec"]["containers"]]
        for image in images:
            assert image.startswith(registry) and image.endswith(":" + cfg["IMAGE_TAG"]), (overlay, image)
        for job in jobs:
            head = k8s.env_of(job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0], docs)
            assert head["CHECKPOINT_MIRROR"] == f"gs://{cfg['BUCKET']}/checkpoints"
        assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {cfg["NAMESPACE"]}
        for ksa in k8s.find(docs, "ServiceAccount"):
            gsa = ksa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
            assert gsa == f"{ksa['metadata']['name']}@{cfg['PROJECT_ID']}.iam.gserviceaccount.com"
        served = k8s.env_of(svc["spec"]["template"]["spec"]["containers"][0])
        if overlay == "gke-pvc":
            assert served["MODEL_URI"] == head["PUBLISH_URIS"] == "/mnt/shared/store"
        else:
            assert served["MODEL_URI"] == head["PUBLISH_URIS"] == f"gs://{cfg['BUCKET']}"
        assert served["FEEDBACK_URI"] == head["FEEDBACK_URI"] == f"gs://{cfg['FEEDBACK_BUCKET']}"


def documented_env(module):
    """The environment variables `python -m <module> --help` documents."""
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=k8s.ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"\(env\s+([A-Z_]+)", out.stdout)) | set(re.findall(r"^([A-Z][A-Z_]+)\s", out.stdout, re.M))


def test_every_env_var_the_manifests_set_is_one_the_code_reads(rendered):
    """A misspelt variable (EPOCH=...) passes every schema and is silently ignored."""
    ray_env = {"RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    # Read by the submitter's shell when it expands the entrypoint, not by our code.
    shell_env = {"RAYJOB_NAME"}
    training, service = documented_env("training"), documented_env("service")
    assert {"EPOCHS", "PUBLISH_URIS"} <= training and {"MODEL_URI", "PORT"} <= service
    for overlay, docs in rendered.items():
        for name, job in k8s.ray_jobs(docs):
            for where, pod in k8s.ray_pods(job):
                for c in pod["containers"]:
                    unknown = set(k8s.env_of(c, docs)) - ray_env - shell_env - training
                    assert not unknown, (overlay, name, where, unknown)
        (svc,) = k8s.find(docs, "Service", "serving.knative.dev")
        unknown = set(k8s.env_of(svc["spec"]["template"]["spec"]["containers"][0], docs)) - service
        assert not unknown, (overlay, unknown)


def test_gpu_overlay_asks_for_gpus(rendered):
    for _, job in k8s.ray_jobs(rendered["gpu"]):  # the nightly retraining too
        head = k8s.env_of(job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0])
        (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        pod = group["template"]["spec"]
        assert head["USE_GPU"] == "1"
        assert int(head["NUM_WORKERS"]) == group["replicas"], "one Ray Train worker per GPU pod"
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"].startswith("nvidia-")
        assert pod["containers"][0]["image"].split("/")[-1].startswith("digitdraw-training-gpu:")
    (cpu_job,) = k8s.find(rendered["gke"], "RayJob")
    assert k8s.env_of(cpu_job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0])["USE_GPU"] == "0"


# ---------------------------------------------------------------------------------------
# The checks catch what they claim to catch


@needs_schemas
def test_a_misspelt_field_fails_the_closed_schema(rendered, crds):
    (job,) = k8s.find(rendered["gke"], "RayJob")
    bad = copy.deepcopy(job)
    bad["spec"]["shutdownAfterJobFinish"] = bad["spec"].pop("shutdownAfterJobFinishes")
    assert any("shutdownAfterJobFinish" in p for p in crds.errors(bad))
    bad = copy.deepcopy(job)
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert any("imagePullPolicyy" in p for p in crds.errors(bad))
    (svc,) = k8s.find(rendered["gke"], "Service", "serving.knative.dev")
    bad = copy.deepcopy(svc)
    bad["spec"]["template"]["spec"]["containerConcurency"] = bad["spec"]["template"]["spec"].pop("containerConcurrency")
    assert any("containerConcurency" in p for p in crds.errors(bad))
    # ... also inside the parts the Knative CRD leaves open, checked as core types
    bad = copy.deepcopy(svc)
    bad["spec"]["template"]["spec"]["volumes"][0]["emptyDir"]["sizeLimt"] = "1Gi"
    assert any("sizeLimt" in p for p in crds.errors(bad))
    bad = copy.deepcopy(svc)
    bad["spec"]["template"]["metadata"]["anotations"] = {}
    assert any("anotations" in p for p in crds.errors(bad))


@needs_schemas
def test_schema_defaults_are_filled_before_validating(rendered, crds):
    """minReplicas/maxReplicas are required but defaulted, as for the API server."""
    (job,) = k8s.find(rendered["gke"], "RayJob")
    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    short = copy.deepcopy(job)
    for key in ("minReplicas", "maxReplicas"):
        del short["spec"]["rayClusterSpec"]["workerGroupSpecs"][0][key]
    assert crds.errors(short) == []
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    bad = copy.deepcopy(job)
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplicas"] = "two"
    assert crds.errors(bad)


@needs_schemas
def test_an_unquoted_annotation_value_fails_the_schema(rendered, crds):
    (svc,) = k8s.find(rendered["gke"], "Service", "serving.knative.dev")
    bad = copy.deepcopy(svc)
    bad["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/max-scale"] = 10
    assert crds.errors(bad)


def test_a_misplaced_autoscaling_annotation_is_caught(rendered):
    (svc,) = k8s.find(rendered["gke"], "Service", "serving.knative.dev")
    bad = copy.deepcopy(svc)
    bad["metadata"].setdefault("annotations", {})["autoscaling.knative.dev/min-scale"] = "0"
    assert any("spec.template.metadata.annotations" in p for p in k8s.knative_rules(bad, FEATURES))


@pytest.mark.parametrize("key, value, expect", [
    ("min-scale", "3", "min-scale 3 > max-scale"),
    ("max-scale", "-1", "integer >= 0"),
    ("target", "0", ">= 0.01"),
    ("metric", "cpu", "concurrency or rps"),
    ("window", "5s", "6s..1h"),
    ("scale-to-zero-pod-retention-period", "2h", "0s..1h"),
    ("initial-scale", "0", "allow-zero-initial-scale"),
    ("min-scal", "1", "typo"),
])
def test_bad_autoscaling_values_are_caught(rendered, key, value, expect):
    (svc,) = k8s.find(rendered["gke"], "Service", "serving.knative.dev")
    bad = copy.deepcopy(svc)
    ann = bad["spec"]["template"]["metadata"]["annotations"]
    ann["autoscaling.knative.dev/max-scale"] = "2"
    ann["autoscaling.knative.dev/" + key] = value
    assert any(expect in p for p in k8s.knative_rules(bad, FEATURES)), k8s.knative_rules(bad, FEATURES)


def test_rayjob_operator_rules_catch_violations(rendered):
    (job,) = k8s.find(rendered["gke"], "RayJob")
    bad = copy.deepcopy(job)
    bad["spec"].update(shutdownAfterJobFinishes=False, ttlSecondsAfterFinished=60)
    assert any("needs shutdownAfterJobFinishes" in p for p in k8s.rayjob_rules(bad))
    bad = copy.deepcopy(job)
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplicas"] = 5
    assert any("minReplicas 5 > maxReplicas" in p for p in k8s.rayjob_rules(bad))
    bad = copy.deepcopy(job)
    bad["spec"]["submissionMode"] = "InteractiveMode"
    assert any("forbid backoffLimit" in p for p in k8s.rayjob_rules(bad))
    bad = copy.deepcopy(job)
    bad["spec"]["runtimeEnvYAML"] = "env_vars: {A: [1"
    assert any("runtimeEnvYAML" in p for p in k8s.rayjob_rules(bad))


def test_knative_pvc_needs_the_feature_flags(rendered):
    (svc,) = k8s.find(rendered["gke-pvc"], "Service", "serving.knative.dev")
    assert k8s.knative_rules(svc, FEATURES) == []
    assert any("podspec-persistent-volume-claim=enabled" in p for p in k8s.knative_rules(svc, {}))
    assert any("podspec-persistent-volume-claim=enabled" in p
               for p in k8s.knative_rules(svc, {"kubernetes.podspec-persistent-volume-claim": "allowed"}))
    writable = copy.deepcopy(svc)
    for v in writable["spec"]["template"]["spec"]["volumes"]:
        v.get("persistentVolumeClaim", {}).pop("readOnly", None)
    assert any("volume-write" in p for p in k8s.knative_rules(writable, FEATURES))
    unmarked = copy.deepcopy(svc)
    for m in unmarked["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]:
        m.pop("readOnly", None)
    assert any("must set readOnly" in p for p in k8s.knative_rules(unmarked, FEATURES))


def test_deployment_rules_catch_violations(rendered):
    docs = copy.deepcopy(rendered["gke"])
    (job,) = k8s.find(docs, "RayJob")
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    worker["containers"][0]["env"] = [{"name": "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "value": "0"}]
    worker["volumes"] = [v for v in worker["volumes"] if v["name"] != "shared"]
    worker["containers"][0]["volumeMounts"] = [m for m in worker["containers"][0]["volumeMounts"] if m["name"] != "shared"]
    job["spec"]["rayClusterSpec"]["rayVersion"] = "2.9.0"
    (svc,) = k8s.find(docs, "Service", "serving.knative.dev")
    svc["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    problems = "\n".join(k8s.deployment_rules(docs))
    for expect in ("worker group cpu: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "STORAGE_PATH='/mnt/shared/runs' is not on a mounted PVC",
                   "rayVersion '2.9.0'", "read-only root fs"):
        assert expect in problems


def test_ray_settings_are_defined_once_and_read_by_every_ray_container(rendered):
    for overlay, docs in rendered.items():
        (ray_env,) = [m for m in k8s.find(docs, "ConfigMap") if m["metadata"]["name"] == "digitdraw-ray"]
        assert ray_env["data"] == {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                                   "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
        for name, job in k8s.ray_jobs(docs):
            for where, pod in k8s.ray_pods(job):
                (c,) = pod["containers"]
                assert {"configMapRef": {"name": "digitdraw-ray"}} in c["envFrom"], (overlay, name, where)
                assert not [e for e in c.get("env", []) if e["name"].startswith("RAY_")], "set once, in the ConfigMap"
                assert k8s.env_of(c, docs)["RAY_AUTH_MODE"] == "disabled"
    # A changed ConfigMap reaches every container, and a missing one is caught.
    docs = copy.deepcopy(rendered["gke"])
    (ray_env,) = [m for m in k8s.find(docs, "ConfigMap") if m["metadata"]["name"] == "digitdraw-ray"]
    ray_env["data"]["RAY_AUTH_MODE"] = "token"
    problems = k8s.deployment_rules(docs)
    assert sum("RAY_AUTH_MODE must be 'disabled'" in p for p in problems) == 6, problems  # 3 pods x (RayJob, cron)
    docs.remove(ray_env)
    assert any("envFrom ConfigMap digitdraw-ray is not in the overlay" in p for p in k8s.deployment_rules(docs))


def entrypoint_argv(job, rayjob_name, tmp_path):
    """The command the Ray head runs: the entrypoint as the submitter's bash expands it,
    with the submitter's environment (RAYJOB_NAME from the RayJob's name, as KubeRay labels it)."""
    submitter = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    env = {"PATH": os.environ["PATH"]}
    for name, value in k8s.env_of(submitter).items():
        if isinstance(value, dict):
            assert value == {"fieldRef": {"fieldPath": k8s.CR_NAME_LABEL}}, name
            value = rayjob_name
        env[name] = value
    out = subprocess.run(["bash", "-c", "printf '%s\\n' " + job["spec"]["entrypoint"]], env=env, capture_output=True,
                         text=True, timeout=30, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_each_rayjob_is_a_run_of_its_own_name(rendered, tmp_path):
    """A new RayJob (train.sh's, retrain.sh's, each night's) trains anew; a retry of one,
    the same RayJob, resumes its run."""
    for overlay, docs in rendered.items():
        for name, job in k8s.ray_jobs(docs):
            assert job["spec"]["backoffLimit"] > 0
            head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
            assert "RUN_NAME" not in k8s.env_of(head, docs), "a fixed run name would be resumed by every RayJob"
            for rayjob in ("digitdraw-train-20261203-101500", "digitdraw-retrain-nightly-29432160"):
                argv = entrypoint_argv(job, rayjob, tmp_path)
                assert argv == ["env", f"DIGITDRAW_ACTOR={rayjob}", "python", "-m", "training", "--run-name", rayjob]
    (job,) = k8s.find(rendered["gke"], "RayJob")
    bad = copy.deepcopy(job)
    bad["spec"]["entrypoint"] = "python -m training --run-name $RUN"
    problems = "\n".join(k8s.deployment_rules([bad if d is job else d for d in rendered["gke"]]))
    assert "$RUN expands in the submitter, whose env does not set it" in problems
    assert "--run-name must be a submitter variable" in problems and "DIGITDRAW_ACTOR" in problems
    bad = copy.deepcopy(job)
    bad["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "RUN_NAME", "value": "digitdraw-001"})
    assert any("head env RUN_NAME" in p for p in k8s.deployment_rules([bad if d is job else d for d in rendered["gke"]]))



def test_nightly_retraining_is_the_rayjob_with_feedback_and_a_warm_start(rendered):
    for overlay, docs in rendered.items():
        (job,) = k8s.find(docs, "RayJob")
        (cron,) = k8s.find(docs, "RayCronJob")
        template = copy.deepcopy(cron["spec"]["jobTemplate"])
        head = template["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        added = {e["name"]: e["value"] for e in head["env"] if e["name"] in ("FEEDBACK_URI", "INIT_FROM")}
        head["env"] = [e for e in head["env"] if e["name"] not in added]
        assert template == job["spec"], f"{overlay}: the job template is the RayJob's spec and two settings"
        (svc,) = k8s.find(docs, "Service", "serving.knative.dev")
        assert added == {"INIT_FROM": "latest",
                         "FEEDBACK_URI": k8s.env_of(svc["spec"]["template"]["spec"]["containers"][0])["FEEDBACK_URI"]}
        assert cron["metadata"]["namespace"] == job["metadata"]["namespace"]
        # Nightly, and a job with all its retries is over long before the next night's.
        assert k8s.cron_min_interval(cron["spec"]["schedule"]) == 24 * 3600
        assert (1 + template["backoffLimit"]) * template["activeDeadlineSeconds"] <= 6 * 3600


@pytest.mark.parametrize("change, expect", [
    ({"schedule": "0 3 * *"}, "5 fields"),
    ({"schedule": "61 3 * * *"}, "out of range"),
    ({"schedule": "CRON_TZ=UTC 0 3 * * *"}, "use timeZone"),
    ({"timeZone": "Mars/Olympus"}, "not an IANA time zone"),
    ({"name": "digitdraw-retrain-nightly-with-a-long-name"}, "longer than 36"),
    ({"jobTemplate": {"ttlSecondsAfterFinished": 60, "shutdownAfterJobFinishes": False}}, "jobTemplate: ttlSeconds"),
])
def test_raycronjob_rules_catch_violations(rendered, change, expect):
    (cron,) = k8s.find(rendered["gke"], "RayCronJob")
    bad = copy.deepcopy(cron)
    if "name" in change:
        bad["metadata"]["name"] = change["name"]
    elif "jobTemplate" in change:
        bad["spec"]["jobTemplate"].update(change["jobTemplate"])
    else:
        bad["spec"].update(change)
    assert any(expect in p for p in k8s.raycronjob_rules(bad)), k8s.raycronjob_rules(bad)


def test_overlapping_retrainings_are_caught(rendered):
    docs = copy.deepcopy(rendered["gke"])
    (cron,) = k8s.find(docs, "RayCronJob")
    cron["spec"]["schedule"] = "0 */6 * * *"  # every 6 h: a job with retries may run 6 h
    assert any("two retrainings could overlap" in p for p in k8s.deployment_rules(docs))
    assert k8s.cron_min_interval("0 3 * * 1,4") == 3 * 24 * 3600
    assert k8s.cron_min_interval("@hourly") == 3600 and k8s.cron_min_interval("*/15 * * * *") == 900
    head = cron["spec"]["jobTemplate"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    for e in head["env"]:
        if e["name"] == "FEEDBACK_URI":
            e["value"] = "gs://another-bucket"
    assert any("is not the feedback store the Knative Service writes" in p for p in k8s.deployment_rules(docs))


def test_feedback_goes_to_a_bucket_of_its_own(rendered):
    docs = copy.deepcopy(rendered["gke"])
    (svc,) = k8s.find(docs, "Service", "serving.knative.dev")
    for e in svc["spec"]["template"]["spec"]["containers"][0]["env"]:
        if e["name"] == "FEEDBACK_URI":
            e["value"] = k8s.env_of(svc["spec"]["template"]["spec"]["containers"][0])["MODEL_URI"] + "/feedback"
    assert any("FEEDBACK_URI must be a bucket of its own" in p for p in k8s.deployment_rules(docs))


# ---------------------------------------------------------------------------------------
# Canary rollouts: the Service infra/ksvc.py renders for each rollout step


def ksvc(overlay_docs, *args):
    out = subprocess.run([sys.executable, os.path.join(k8s.ROOT, "infra", "ksvc.py"), *args],
                         input=yaml.safe_dump_all(overlay_docs), capture_output=True, text=True, timeout=60)
    return out.returncode, [d for d in yaml.safe_load_all(out.stdout) if d] if out.returncode == 0 else out.stderr


@pytest.fixture(scope="module")
def rollout(rendered):
    """Each overlay's Service as deploy-service.sh, rollout.sh canary and rollout.sh promote/abort apply it."""
    steps = {}
    for overlay, docs in rendered.items():
        _, deployed = ksvc(docs, "stable")
        (_, (canary,)), (_, (pinned,)) = ksvc(docs, "canary", "20261202T000028Z-a6785ae6", "10"), ksvc(docs, "pinned")
        (stable,) = k8s.find(deployed, "Service", "serving.knative.dev")
        steps[overlay] = {"deployed": deployed, "stable": stable, "canary": canary, "pinned": pinned}
    return steps


@needs_schemas
@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_rollout_manifests_match_the_schema_and_the_webhook(overlay, rollout, crds):
    for step in ("stable", "canary", "pinned"):
        svc = rollout[overlay][step]
        assert crds.errors(svc) == [], (overlay, step)
        assert k8s.knative_rules(svc, FEATURES) == [], (overlay, step)
    assert k8s.deployment_rules(rollout[overlay]["deployed"]) == []


def test_canary_splits_between_the_stable_revision_and_a_pinned_candidate(rendered, rollout):
    for overlay, steps in rollout.items():
        (original,) = k8s.find(rendered[overlay], "Service", "serving.knative.dev")
        stable, canary, pinned = steps["stable"], steps["canary"], steps["pinned"]
        name = stable["spec"]["template"]["metadata"]["name"]
        assert re.fullmatch(r"digitdraw-latest-[0-9a-f]{8}", name)
        assert "traffic" not in stable, "deploy-service.sh leaves the traffic to Knative: all to the latest revision"
        assert "MODEL_VERSION" not in k8s.env_of(stable["spec"]["template"]["spec"]["containers"][0]), "follows LATEST"
        candidate = canary["spec"]["template"]["metadata"]["name"]
        assert re.fullmatch(r"digitdraw-20261202t000028z-a6785ae6-[0-9a-f]{8}", candidate)
        assert canary["spec"]["traffic"] == [{"revisionName": name, "percent": 90},
                                             {"revisionName": candidate, "percent": 10, "tag": "candidate"}]
        env = k8s.env_of(canary["spec"]["template"]["spec"]["containers"][0])
        assert env["MODEL_VERSION"] == "20261202T000028Z-a6785ae6"
        # Everything else is the stable revision's; promote and abort go back to it by name.
        unpinned = copy.deepcopy(canary["spec"]["template"])
        unpinned["spec"]["containers"][0]["env"] = [e for e in unpinned["spec"]["containers"][0]["env"]
                                                    if e["name"] != "MODEL_VERSION"]
        unpinned["metadata"].pop("name")
        assert unpinned == original["spec"]["template"]
        assert pinned["spec"]["template"] == stable["spec"]["template"]
        assert pinned["spec"]["traffic"] == [{"revisionName": name, "percent": 100}]
        assert {k: v for k, v in canary.items() if k != "spec"} == {k: v for k, v in original.items() if k != "spec"}


def test_revision_names_follow_the_template(rendered):
    docs = copy.deepcopy(rendered["gke"])
    (_, (a,)), (_, (b,)) = ksvc(docs, "pinned"), ksvc(docs, "pinned")
    assert a == b, "the same manifest gives the same revision name: reapplying changes nothing"
    (svc,) = k8s.find(docs, "Service", "serving.knative.dev")
    svc["spec"]["template"]["spec"]["containers"][0]["image"] += "-new"
    _, (c,) = ksvc(docs, "pinned")
    assert c["spec"]["template"]["metadata"]["name"] != a["spec"]["template"]["metadata"]["name"], \
        "Knative rejects a changed template under its old name"
    _, (long,) = ksvc(docs, "canary", "v" * 128, "5")
    assert k8s.dns1035_label(long["spec"]["template"]["metadata"]["name"])


@pytest.mark.parametrize("args, expect", [
    (["canary", "not a version", "10"], "is not a model version"),
    (["canary", "20261202T000028Z-a6785ae6", "101"], "from 0 to 100"),
    (["canary", "20261202T000028Z-a6785ae6", "ten"], "from 0 to 100"),
    (["promote"], "usage:"),
])
def test_ksvc_refuses_bad_arguments(rendered, args, expect):
    code, err = ksvc(rendered["gke"], *args)
    assert code != 0 and expect in err


@pytest.mark.parametrize("break_it, expect", [
    (lambda t, s: t[0].update(percent=80), "sum to 90%, want 100"),
    (lambda t, s: t[1].update(tag="Candidate"), "not a DNS-1035 label"),
    (lambda t, s: t[0].update(tag="candidate"), "multiple definitions"),
    (lambda t, s: t[0].update(latestRevision=True), "may not set revisionName"),
    (lambda t, s: (t[1].pop("revisionName"), t[1].update(latestRevision=False)), "latestRevision false needs"),
    (lambda t, s: t[1].update(percent=110, revisionName="x") or t[0].update(percent=-10), "outside 0..100"),
    (lambda t, s: t[0].update(configurationName="digitdraw"), "configurationName is not allowed"),
    (lambda t, s: t[1].update(url="http://candidate-digitdraw.example"), "url is not allowed"),
    (lambda t, s: s["template"]["metadata"].update(name="serving-20261202"), "must have the prefix 'digitdraw-'"),
    (lambda t, s: s["template"]["metadata"].update(name="digitdraw-" + "x" * 60), "not a DNS-1035 label"),
])
def test_traffic_rules_catch_violations(rollout, break_it, expect):
    bad = copy.deepcopy(rollout["gke"]["canary"])
    assert k8s.traffic_rules(bad) == []
    break_it(bad["spec"]["traffic"], bad["spec"])
    assert any(expect in p for p in k8s.traffic_rules(bad)), k8s.traffic_rules(bad)


def test_go_durations():
    assert k8s.go_duration("1m30s") == 90 and k8s.go_duration("0") == 0 and k8s.go_duration("1h") == 3600
    with pytest.raises(ValueError):
        k8s.go_duration("90")
