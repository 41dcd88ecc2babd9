"""The review page's manifests (review/base in every overlay, review/expose), its image, and
what they promise: inside the cluster only until exposed, Identity-Aware Proxy in front and
verified by the app, only the allowlist deciding, its own least-privilege identity.

Core kinds (Deployment, Service, ServiceAccount, Ingress) pass kubernetes-validate --strict.
GKE's own kinds have no schema in ../shared/k8s-schemas, so BackendConfig and
ManagedCertificate are checked against closed schemas transcribed here from their sources:
kubernetes/ingress-gce pkg/apis/backendconfig/v1/types.go and zz_generated.openapi.go
(commit acbcf5d6, 2026-08-21) and GoogleCloudPlatform/gke-managed-certs
deploy/managedcertificates-crd.yaml (commit 3498c2a0).
"""
import copy
import json
import os
import re
import shlex
import subprocess
import sys

import jsonschema
import pytest
import yaml

import k8s_helpers as k8s
from test_dockerfiles import cmd_of, final_stage, instructions, requirements_installed

pytestmark = pytest.mark.slow  # renders the overlays with kubectl kustomize

DOCKERFILE = "training/review/Dockerfile"
NAME = "digitdraw-review"
CONFIG = dict(line.split("=", 1) for line in open(os.path.join(k8s.ROOT, "infra", "config", "config.env")).read()
              .splitlines() if line and not line.startswith("#"))

_INT, _STR, _BOOL = {"type": "integer"}, {"type": "string"}, {"type": "boolean"}
BACKENDCONFIG_SPEC = {"type": "object", "additionalProperties": False, "properties": {
    "iap": {"type": "object", "additionalProperties": False, "required": ["enabled"], "properties": {
        "enabled": _BOOL,
        "oauthclientCredentials": {"type": "object", "additionalProperties": False, "required": ["secretName"],
                                   "properties": {"secretName": _STR, "clientID": _STR, "clientSecret": _STR}}}},
    "cdn": {"type": "object"},
    "securityPolicy": {"type": "object", "additionalProperties": False, "required": ["name"],
                       "properties": {"name": _STR}},
    "timeoutSec": _INT,
    "connectionDraining": {"type": "object", "additionalProperties": False,
                           "properties": {"drainingTimeoutSec": _INT}},
    "sessionAffinity": {"type": "object", "additionalProperties": False,
                        "properties": {"affinityType": _STR, "affinityCookieTtlSec": _INT}},
    "customRequestHeaders": {"type": "object", "additionalProperties": False,
                             "properties": {"headers": {"type": "array", "items": _STR}}},
    "customResponseHeaders": {"type": "object", "additionalProperties": False,
                              "properties": {"headers": {"type": "array", "items": _STR}}},
    "healthCheck": {"type": "object", "additionalProperties": False, "properties": {
        "checkIntervalSec": _INT, "timeoutSec": _INT, "healthyThreshold": _INT, "unhealthyThreshold": _INT,
        "type": _STR, "port": _INT, "requestPath": _STR}},
    "logging": {"type": "object", "additionalProperties": False,
                "properties": {"enable": _BOOL, "sampleRate": {"type": "number"}}}}}
MANAGEDCERTIFICATE_SPEC = {"type": "object", "additionalProperties": False, "properties": {
    "domains": {"type": "array", "maxItems": 100, "items": {
        "type": "string", "maxLength": 63,
        "pattern": r"^(([a-z0-9]+|[a-z0-9][-a-z0-9]*[a-z0-9])\.)+[a-z][-a-z0-9]*[a-z0-9]$"}}}}
GKE_KINDS = {("cloud.google.com/v1", "BackendConfig"): BACKENDCONFIG_SPEC,
             ("networking.gke.io/v1", "ManagedCertificate"): MANAGEDCERTIFICATE_SPEC}


def gke_kind_errors(doc):
    """Problems of a BackendConfig or ManagedCertificate: its metadata as core ObjectMeta, its
    spec against the closed schema above."""
    schema = GKE_KINDS[(doc["apiVersion"], doc["kind"])]
    problems = [f"(top): unknown field {k}" for k in set(doc) - {"apiVersion", "kind", "metadata", "spec"}]
    problems += k8s.core_type_errors("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", doc["metadata"])
    v = jsonschema.Draft7Validator(schema)
    return problems + [f"spec.{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc["spec"])]


def render_expose():
    out = subprocess.run(["kubectl", "kustomize", os.path.join(k8s.ROOT, "review", "expose")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def rendered():
    return {overlay: k8s.render(overlay) for overlay in k8s.OVERLAYS}


@pytest.fixture(scope="module")
def exposed():
    return render_expose()


def named(docs, kind, name=NAME):
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def review_docs(docs):
    return [d for d in docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "review"]


def review_help_env():
    out = subprocess.run([sys.executable, "-m", "training.review", "--help"], cwd=k8s.ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"\(env\s+([A-Z_]+)", out.stdout))


def test_every_overlay_runs_the_review_page_inside_the_cluster_only(rendered):
    for overlay, docs in rendered.items():
        review = review_docs(docs)
        assert {(d["kind"], d["metadata"]["name"]) for d in review} == {
            (kind, NAME) for kind in ("Deployment", "Service", "ServiceAccount", "BackendConfig")}, overlay
        assert not k8s.find(docs, "Ingress"), "only review/expose routes to it from outside"
        svc = named(docs, "Service")
        assert svc["apiVersion"] == "v1" and svc["spec"]["type"] == "ClusterIP"
        assert not [d for d in k8s.find(docs, "Service") if d["spec"].get("type") in ("LoadBalancer", "NodePort")]
        for doc in review:
            if (doc["apiVersion"], doc["kind"]) in GKE_KINDS:
                assert gke_kind_errors(doc) == [], (overlay, doc["kind"])
            else:
                assert k8s.core_kind_errors(doc) == [], (overlay, doc["kind"])


def test_the_deployment_verifies_iap_for_the_allowlist_with_its_own_identity(rendered):
    help_env = review_help_env()
    for overlay, docs in rendered.items():
        deployment = named(docs, "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        assert deployment["spec"]["replicas"] == 1, "one process holds the queue"
        assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"][
            "labels"].items()
        assert named(docs, "Service")["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        (c,) = pod["containers"]
        env = k8s.env_of(c, docs)
        assert set(env) <= help_env, f"{overlay}: variables python -m training.review does not read: {set(env) - help_env}"
        assert env["REVIEW_AUTH"] == "iap" and env["REVIEW_HOST"] == "0.0.0.0"
        assert env["REVIEWERS"] == CONFIG["REVIEWERS"]
        (knative,) = k8s.find(docs, "Service", "serving.knative.dev")
        assert env["FEEDBACK_URI"] == k8s.env_of(knative["spec"]["template"]["spec"]["containers"][0])["FEEDBACK_URI"]
        assert c["envFrom"] == [{"configMapRef": {"name": f"{NAME}-iap", "optional": True}}], \
            "REVIEW_IAP_AUDIENCE, from deploy-review.sh --expose; without it every request is refused"
        (port,) = c["ports"]
        assert int(env["REVIEW_PORT"]) == port["containerPort"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}
        assert c["command"] == cmd_of(DOCKERFILE) == ["python", "-m", "training.review"]
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
        registry = f"{CONFIG['REGION']}-docker.pkg.dev/{CONFIG['PROJECT_ID']}/{CONFIG['AR_REPO']}"
        assert c["image"] == f"{registry}/{NAME}:{CONFIG['IMAGE_TAG']}"
        ksa = named(docs, "ServiceAccount")
        assert pod["serviceAccountName"] == NAME
        assert ksa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == \
            f"{NAME}@{CONFIG['PROJECT_ID']}.iam.gserviceaccount.com"


def test_iap_guards_the_backend_and_health_checks_ask_healthz(rendered):
    docs = rendered["gke"]
    svc, config = named(docs, "Service"), named(docs, "BackendConfig")
    annotations = svc["metadata"]["annotations"]
    assert json.loads(annotations["cloud.google.com/backend-config"]) == {"default": config["metadata"]["name"]}
    assert json.loads(annotations["cloud.google.com/neg"]) == {"ingress": True}
    assert config["spec"]["iap"] == {"enabled": True}, "Google's managed OAuth client: no client secret to keep"
    (c,) = named(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert config["spec"]["healthCheck"] == {"type": "HTTP", "requestPath": "/healthz",
                                             "port": c["ports"][0]["containerPort"]}


def test_expose_is_an_https_load_balancer_for_the_review_service_only(rendered, exposed):
    assert {(d["kind"], d["metadata"]["name"]) for d in exposed} == {
        ("Namespace", CONFIG["NAMESPACE"]), ("Ingress", NAME), ("ManagedCertificate", NAME)}
    ingress, cert = named(exposed, "Ingress"), named(exposed, "ManagedCertificate")
    assert k8s.core_kind_errors(ingress) == [] and gke_kind_errors(cert) == []
    assert ingress["metadata"]["namespace"] == cert["metadata"]["namespace"] == CONFIG["NAMESPACE"]
    annotations = ingress["metadata"]["annotations"]
    assert annotations["kubernetes.io/ingress.class"] == "gce"
    assert annotations["kubernetes.io/ingress.allow-http"] == "false"
    assert annotations["networking.gke.io/managed-certificates"] == cert["metadata"]["name"]
    with open(os.path.join(k8s.ROOT, "infra", "lib.sh")) as f:
        assert f"\nREVIEW={annotations['kubernetes.io/ingress.global-static-ip-name']} " in f.read(), \
            "the address deploy-review.sh reserves"
    assert cert["spec"]["domains"] == [CONFIG["REVIEW_DOMAIN"]]
    backend = ingress["spec"]["defaultBackend"]["service"]
    svc = named(rendered["gke"], "Service")
    assert backend["name"] == svc["metadata"]["name"] and backend["port"]["name"] in [p["name"] for p in svc["spec"]["ports"]]
    assert "rules" not in ingress["spec"], "one backend: the review page"


def test_the_gke_kind_checks_catch_mistakes(rendered, exposed):
    config = named(rendered["gke"], "BackendConfig")
    for change, expect in ((lambda s: s.update(iap={"enable": True}), "enable"),
                           (lambda s: s["healthCheck"].update(requestPath=1), "requestPath"),
                           (lambda s: s.update(healthChek={}), "healthChek"),
                           (lambda s: s["iap"].update(oauthclientCredentials={"clientID": "x"}), "secretName")):
        bad = copy.deepcopy(config)
        change(bad["spec"])
        assert any(expect in p for p in gke_kind_errors(bad)), (expect, gke_kind_errors(bad))
    cert = copy.deepcopy(named(exposed, "ManagedCertificate"))
    cert["spec"]["domains"] = ["*.example.com"]
    assert gke_kind_errors(cert)
    cert["metadata"]["lables"] = {}
    assert any("lables" in p for p in gke_kind_errors(cert))


def test_the_review_image_holds_what_its_manifest_runs():
    assert requirements_installed(DOCKERFILE) == ["training/review/requirements.txt"]
    with open(os.path.join(k8s.ROOT, "requirements.txt")) as f:
        assert "-r training/review/requirements.txt" in f.read().split("\n"), "the tests install what the image does"
    with open(os.path.join(k8s.ROOT, "training", "review", "requirements.txt")) as f:
        assert not re.search(r"^(torch|ray)\b", f.read(), re.M), "no torch or Ray in the review image"
    stages = final_stage(DOCKERFILE)
    assert len(stages) == 2
    (user,) = [args for op, args in stages[-1][1] if op == "USER"]
    (deployment,) = [d for d in k8s.find(k8s.render("gke"), "Deployment") if d["metadata"]["name"] == NAME]
    sc = deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert user.split(":") == [str(sc["runAsUser"]), str(sc["runAsGroup"])]
    copied = [shlex.split(args) for op, args in instructions(DOCKERFILE) if op == "COPY" and "--from" not in args]
    assert ["training/review/", "training/review/"] in copied and not any("training/" == w[0] for w in copied), \
        "the review package and what it imports, not the whole training package"
