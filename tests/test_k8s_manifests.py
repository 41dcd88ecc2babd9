"""Every overlay, rendered by `kubectl kustomize`, against the official schemas and rules.

CRD objects (RayJob, Knative Service) are validated against the KubeRay v1.7.0 and
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
        assert kinds.count("RayJob") == 1 and kinds.count("Service") == 1, (overlay, kinds)
        assert {"Namespace", "PersistentVolumeClaim", "ServiceAccount"} <= set(kinds), (overlay, kinds)


@needs_schemas
@pytest.mark.parametrize("overlay", k8s.OVERLAYS)
def test_crd_objects_match_official_schemas(overlay, rendered, crds):
    custom = [d for d in rendered[overlay] if crds.knows(d)]
    assert {d["kind"] for d in custom} == {"RayJob", "Service"}, "the RayJob and Knative Service have schemas"
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
        (job,) = k8s.find(docs, "RayJob")
        (svc,) = k8s.find(docs, "Service", "serving.knative.dev")
        images = [c["image"] for _, pod in k8s.ray_pods(job) for c in pod["containers"]]
        images += [c["image"] for c in svc["spec"]["template"]["spec"]["containers"]]
        for image in images:
            assert image.startswith(registry) and image.endswith(":" + cfg["IMAGE_TAG"]), (overlay, image)
        head = k8s.env_of(job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0])
        assert head["CHECKPOINT_MIRROR"] == f"gs://{cfg['BUCKET']}/checkpoints"
        assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {cfg["NAMESPACE"]}
        for ksa in k8s.find(docs, "ServiceAccount"):
            gsa = ksa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
            assert gsa == f"{ksa['metadata']['name']}@{cfg['PROJECT_ID']}.iam.gserviceaccount.com"
        model_uri = k8s.env_of(svc["spec"]["template"]["spec"]["containers"][0])["MODEL_URI"]
        if overlay == "gke-pvc":
            assert model_uri == head["PUBLISH_URIS"] == "/mnt/shared/store"
        else:
            assert model_uri == head["PUBLISH_URIS"] == f"gs://{cfg['BUCKET']}"


def documented_env(module):
    """The environment variables `python -m <module> --help` documents."""
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=k8s.ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"\(env\s+([A-Z_]+)", out.stdout)) | set(re.findall(r"^([A-Z][A-Z_]+)\s", out.stdout, re.M))


def test_every_env_var_the_manifests_set_is_one_the_code_reads(rendered):
    """A misspelt variable (EPOCH=...) passes every schema and is silently ignored."""
    ray_env = {"RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    training, service = documented_env("training"), documented_env("service")
    assert {"EPOCHS", "PUBLISH_URIS"} <= training and {"MODEL_URI", "PORT"} <= service
    for overlay, docs in rendered.items():
        (job,) = k8s.find(docs, "RayJob")
        for where, pod in k8s.ray_pods(job):
            for c in pod["containers"]:
                assert set(k8s.env_of(c)) - ray_env <= training, (overlay, where)
        (svc,) = k8s.find(docs, "Service", "serving.knative.dev")
        assert set(k8s.env_of(svc["spec"]["template"]["spec"]["containers"][0])) <= service, overlay


def test_gpu_overlay_asks_for_gpus(rendered):
    (job,) = k8s.find(rendered["gpu"], "RayJob")
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
    bad["spec"]["shutdownAfterJobFinishes"] = False
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
    for e in worker["containers"][0]["env"]:
        if e["name"] == "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER":
            e["value"] = "0"
    worker["volumes"] = [v for v in worker["volumes"] if v["name"] != "shared"]
    worker["containers"][0]["volumeMounts"] = [m for m in worker["containers"][0]["volumeMounts"] if m["name"] != "shared"]
    job["spec"]["rayClusterSpec"]["rayVersion"] = "2.9.0"
    (svc,) = k8s.find(docs, "Service", "serving.knative.dev")
    svc["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    problems = "\n".join(k8s.deployment_rules(docs))
    for expect in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "STORAGE_PATH='/mnt/shared/runs' is not on a mounted PVC",
                   "rayVersion '2.9.0'", "read-only root fs"):
        assert expect in problems


def test_go_durations():
    assert k8s.go_duration("1m30s") == 90 and k8s.go_duration("0") == 0 and k8s.go_duration("1h") == 3600
    with pytest.raises(ValueError):
        k8s.go_duration("90")
