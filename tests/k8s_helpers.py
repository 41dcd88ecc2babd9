"""Offline checks of the Kubernetes manifests, shared by tests/test_k8s_*.py.

- ``render(overlay)``: the documents `kubectl kustomize infra/overlays/<overlay>` prints.
- ``CRDSchemas``: the official CRD schemas (KubeRay v1.7.0, Knative Serving 1.23) from
  ``../shared/k8s-schemas`` (or $K8S_SCHEMAS_DIR), *closed* so an unknown field fails the
  way kubeconform --strict fails it, with the schema's defaults filled in first the way
  the API server fills them. Their open subtrees (``x-kubernetes-preserve-unknown-fields``,
  a CRD's root ``metadata``) are checked against the core types of kubernetes-validate.
- ``rayjob_rules`` / ``raycronjob_rules`` / ``knative_rules`` / ``traffic_rules``: what
  KubeRay's operator and Knative's webhook reject although the schemas allow it
  (../shared/k8s-schemas/NOTES.md lists them; the traffic rules are Knative's
  pkg/apis/serving/v1/route_validation.go and revision_validation.go).
- ``deployment_rules``: this project's own promises (same Ray version and auth mode
  everywhere, PVC on every Ray node, Workload Identity, probes, non-root, ...).

Each check returns a list of problems; an empty list means the object passed.
"""
import copy
import glob
import os
import re
import shutil
import subprocess

import jsonschema
import yaml
from referencing import Registry, Resource

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERLAYS_DIR = os.path.join(ROOT, "infra", "overlays")
OVERLAYS = sorted(d for d in os.listdir(OVERLAYS_DIR) if os.path.isfile(os.path.join(OVERLAYS_DIR, d, "kustomization.yaml")))

# The Kubernetes version whose core schemas we check against (GKE's regular channel).
KUBERNETES_VERSION = "1.34.0"


def schemas_dir():
    return os.environ.get("K8S_SCHEMAS_DIR") or os.path.join(os.path.dirname(ROOT), "shared", "k8s-schemas")


def missing_schemas_reason():
    """Why the CRD schemas cannot be used here, or None if they can."""
    d = schemas_dir()
    if not glob.glob(os.path.join(d, "kuberay", "ray.io_rayjobs.yaml")) or \
            not glob.glob(os.path.join(d, "knative-serving", "service.yaml")):
        return (f"official CRD schemas not found in {d} (expected kuberay/ray.io_rayjobs.yaml and "
                "knative-serving/service.yaml); put them in ../shared/k8s-schemas or set K8S_SCHEMAS_DIR, "
                "or validate against a live cluster with `make validate`")
    return None


def render(overlay):
    """The rendered documents of infra/overlays/<overlay>, as dicts."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is not installed; it renders the kustomize overlays (`kubectl kustomize`)")
    out = subprocess.run([kubectl, "kustomize", os.path.join(OVERLAYS_DIR, overlay)],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize infra/overlays/{overlay} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find(docs, kind, api_group=None):
    return [d for d in docs if d["kind"] == kind and (api_group is None or d["apiVersion"].startswith(api_group + "/"))]


# ---------------------------------------------------------------------------------------
# CRD schemas: closed, with defaults


def close_schema(schema):
    """A copy of ``schema`` in which every object that lists its properties rejects others.

    Objects marked x-kubernetes-preserve-unknown-fields stay open, as do maps (their
    ``additionalProperties`` is a schema for the values).
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: close_schema(s) for name, s in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = close_schema(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = close_schema(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [close_schema(s) for s in out[key]]
    if "not" in out:
        out["not"] = close_schema(out["not"])
    return out


def fill_defaults(schema, value):
    """Fill in place the ``default``s the API server would fill before validating."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name, sub in props.items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
        for name, v in value.items():
            if name in props:
                fill_defaults(props[name], v)
            elif isinstance(schema.get("additionalProperties"), dict):
                fill_defaults(schema["additionalProperties"], v)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for v in value:
            fill_defaults(schema["items"], v)
    return value


def _is_open(schema):
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return True
    return schema.get("type") == "object" and "properties" not in schema and "additionalProperties" not in schema


def open_subtrees(schema, value, path=()):
    """Yield (path, value) for each part of ``value`` that ``schema`` leaves unchecked."""
    if _is_open(schema):
        yield path, value
        return
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name, v in value.items():
            if name in props:
                yield from open_subtrees(props[name], v, path + (name,))
            elif isinstance(schema.get("additionalProperties"), dict):
                yield from open_subtrees(schema["additionalProperties"], v, path + (name,))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            yield from open_subtrees(schema["items"], v, path + (i,))


# The core type of each open subtree, by the name of the field that holds it. Knative
# leaves these open because its feature flags gate them; the fields inside are core's.
CORE_TYPES = {
    "metadata": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    "emptyDir": "io.k8s.api.core.v1.EmptyDirVolumeSource",
    "persistentVolumeClaim": "io.k8s.api.core.v1.PersistentVolumeClaimVolumeSource",
    "csi": "io.k8s.api.core.v1.CSIVolumeSource",
    "ephemeral": "io.k8s.api.core.v1.EphemeralVolumeSource",
    "hostPath": "io.k8s.api.core.v1.HostPathVolumeSource",
    "image": "io.k8s.api.core.v1.ImageVolumeSource",
    "affinity": "io.k8s.api.core.v1.Affinity",
    "dnsConfig": "io.k8s.api.core.v1.PodDNSConfig",
    "securityContext": "io.k8s.api.core.v1.PodSecurityContext",
    "tolerations": "io.k8s.api.core.v1.Toleration",
    "hostAliases": "io.k8s.api.core.v1.HostAlias",
    "initContainers": "io.k8s.api.core.v1.Container",
    "topologySpreadConstraints": "io.k8s.api.core.v1.TopologySpreadConstraint",
    "fieldRef": "io.k8s.api.core.v1.ObjectFieldSelector",
    "resourceFieldRef": "io.k8s.api.core.v1.ResourceFieldSelector",
}


def _core_dir(strict=True):
    import kubernetes_validate

    base = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
    return os.path.join(base, f"v{KUBERNETES_VERSION}-local" + ("-strict" if strict else ""))


_core = {}


def core_type_errors(type_name, value):
    """Problems of ``value`` as the core type ``type_name`` (kubernetes-validate's strict schemas)."""
    if "registry" not in _core:
        import json

        with open(os.path.join(_core_dir(), "_definitions.json")) as f:
            defs = json.load(f)
        _core["registry"] = Resource.from_contents(defs) @ Registry()
        _core["id"] = defs["$id"]
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": f"{_core['id']}#/$defs/{type_name}"}
    v = jsonschema.Draft202012Validator(schema, registry=_core["registry"])
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in v.iter_errors(value)]


def core_kind_errors(doc):
    """kubernetes-validate --strict on one core object (None if it has no schema for the kind)."""
    import kubernetes_validate.utils as kv

    try:
        kv.validate(doc, KUBERNETES_VERSION, strict=True)
    except kv.SchemaNotFoundError:
        return None
    except kv.ValidationError as e:
        return [f"{'.'.join(map(str, e.path))}: {e.message}"]
    return []


class CRDSchemas:
    """The official CRD schemas, by (apiVersion, kind), closed."""

    def __init__(self, directory=None):
        directory = directory or schemas_dir()
        self.schemas = {}
        for path in sorted(glob.glob(os.path.join(directory, "*", "*.yaml"))):
            with open(path) as f:  # megabytes of YAML: libyaml's loader where it is built in
                for crd in yaml.load_all(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
                    if not crd or crd.get("kind") != "CustomResourceDefinition":
                        continue
                    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                    for v in crd["spec"]["versions"]:
                        if v.get("served", True):
                            self.schemas[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
        self._closed = {}

    def knows(self, doc):
        return (doc.get("apiVersion"), doc.get("kind")) in self.schemas

    def errors(self, doc):
        """Problems of ``doc`` against its closed CRD schema, after defaulting; open parts
        are checked against their core types."""
        schema = self.schemas[(doc["apiVersion"], doc["kind"])]
        doc = fill_defaults(schema, copy.deepcopy(doc))
        key = (doc["apiVersion"], doc["kind"])
        if key not in self._closed:
            self._closed[key] = jsonschema.Draft7Validator(close_schema(schema))
        v = self._closed[key]
        problems = [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in v.iter_errors(doc)]
        for path, value in open_subtrees(schema, doc):
            name = next((p for p in reversed(path) if isinstance(p, str)), None)
            where = ".".join(map(str, path))
            if name not in CORE_TYPES:
                problems.append(f"{where}: open in the CRD schema and no core type known to check it against")
                continue
            problems += [f"{where} ({CORE_TYPES[name].rsplit('.', 1)[-1]}) {e}" for e in core_type_errors(CORE_TYPES[name], value)]
        return problems


# ---------------------------------------------------------------------------------------
# KubeRay operator rules (ray-operator/controllers/ray/utils/validation.go)

SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}


def rayjob_rules(job):
    spec, problems = job.get("spec", {}), []
    cluster = spec.get("rayClusterSpec")
    shutdown = spec.get("shutdownAfterJobFinishes", False)
    mode = spec.get("submissionMode", "K8sJobMode")
    if not cluster and not spec.get("clusterSelector"):
        problems.append("one of rayClusterSpec or clusterSelector is required")
    if spec.get("ttlSecondsAfterFinished", 0) > 0 and not shutdown:
        problems.append("ttlSecondsAfterFinished > 0 needs shutdownAfterJobFinishes: true")
    if spec.get("suspend") and not shutdown:
        problems.append("suspend needs shutdownAfterJobFinishes: true")
    for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if key in spec and spec[key] <= 0:
            problems.append(f"{key} must be > 0")
    if mode not in SUBMISSION_MODES:
        problems.append(f"submissionMode {mode!r} is not one of {sorted(SUBMISSION_MODES)}")
    if mode == "SidecarMode":
        for key in ("submitterPodTemplate", "submitterConfig", "clusterSelector"):
            if key in spec:
                problems.append(f"SidecarMode forbids {key}")
    if (mode == "InteractiveMode" or spec.get("clusterSelector")) and spec.get("backoffLimit", 0) > 0:
        problems.append("InteractiveMode and clusterSelector forbid backoffLimit > 0")
    if "runtimeEnvYAML" in spec:
        try:
            if not isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict):
                problems.append("runtimeEnvYAML must be a YAML mapping")
        except yaml.YAMLError as e:
            problems.append(f"runtimeEnvYAML does not parse: {e}")
    if cluster:
        if not cluster.get("headGroupSpec", {}).get("template", {}).get("spec", {}).get("containers"):
            problems.append("the head group template needs at least one container")
        for g in cluster.get("workerGroupSpecs", []):
            name = g.get("groupName")
            if not g.get("template", {}).get("spec", {}).get("containers"):
                problems.append(f"worker group {name}: the template needs at least one container")
            lo, hi = g.get("minReplicas", 0), g.get("maxReplicas", 2147483647)
            if lo > hi:
                problems.append(f"worker group {name}: minReplicas {lo} > maxReplicas {hi}")
            if "replicas" in g and not lo <= g["replicas"] <= hi:
                problems.append(f"worker group {name}: replicas {g['replicas']} outside [{lo}, {hi}]")
    return problems


# KubeRay's RayCronJob rules (validation.go, ValidateRayCronJobSpec; raycronjob_controller.go)

MAX_RAYCRONJOB_NAME = 36  # MaxRayJobNameLength (47) less the "-<minutes>" of each tick's RayJob
CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 6))
CRON_DESCRIPTORS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
                    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}


def cron_text(schedule):
    """``schedule`` with a descriptor (@daily, ...) written out as its 5 fields."""
    return CRON_DESCRIPTORS.get(schedule.strip(), schedule)


def cron_fields(schedule):
    """The sets of values a standard 5-field cron schedule (or @daily etc.) matches; ValueError if invalid.

    Numbers only, as robfig/cron's ParseStandard takes them (plus names it also takes are
    not needed here). A day-of-week 7 means Sunday.
    """
    parts = cron_text(schedule).split()
    if len(parts) != 5:
        raise ValueError(f"{schedule!r}: a cron schedule has 5 fields (minute hour day month weekday)")
    sets = []
    for part, (what, lo, hi) in zip(parts, CRON_FIELDS):
        values = set()
        for item in part.split(","):
            rng, _, step = item.partition("/")
            if rng in ("*", "?"):
                a, b = lo, hi
            elif "-" in rng:
                a, b = (int(x) for x in rng.split("-", 1))
            elif rng.isdigit():
                a = b = int(rng)
                if step:
                    b = hi
            else:
                raise ValueError(f"{schedule!r}: {what} field {part!r} is not numeric")
            top = 7 if what == "day of week" else hi
            if not (lo <= a <= b <= top) or (step and (not step.isdigit() or int(step) < 1)):
                raise ValueError(f"{schedule!r}: {what} field {part!r} is out of range {lo}-{hi}")
            values |= {v % 7 if what == "day of week" else v for v in range(a, b + 1, int(step or 1))}
        sets.append(values)
    return sets


def cron_min_interval(schedule):
    """The shortest time in seconds between two ticks of ``schedule`` over four weeks (from a Monday)."""
    import datetime

    minute, hour, dom, month, dow = cron_fields(schedule)
    fields = cron_text(schedule).split()
    day_star, week_star = fields[2] in ("*", "?"), fields[4] in ("*", "?")
    t = datetime.datetime(2029, 1, 1)  # a Monday
    ticks = []
    for _ in range(28 * 24 * 60):
        # cron's rule: with both day fields restricted, either one matching is enough
        day_ok = ((t.day in dom) and ((t.isoweekday() % 7) in dow)) if (day_star or week_star) else \
            ((t.day in dom) or ((t.isoweekday() % 7) in dow))
        if t.minute in minute and t.hour in hour and t.month in month and day_ok:
            ticks.append(t)
        t += datetime.timedelta(minutes=1)
    if len(ticks) < 2:
        return float("inf")
    return min((b - a).total_seconds() for a, b in zip(ticks, ticks[1:]))


def raycronjob_rules(cron):
    spec, problems = cron.get("spec", {}), []
    name = cron.get("metadata", {}).get("name", "")
    if len(name) > MAX_RAYCRONJOB_NAME:
        problems.append(f"name {name!r} is longer than {MAX_RAYCRONJOB_NAME} characters")
    schedule = spec.get("schedule", "")
    if "TZ" in schedule:
        problems.append("schedule: no TZ or CRON_TZ in the schedule; use timeZone")
    else:
        try:
            cron_fields(schedule)
        except ValueError as e:
            problems.append(f"schedule: {e}")
    if "timeZone" in spec:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(spec["timeZone"])
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            problems.append(f"timeZone {spec['timeZone']!r} is not an IANA time zone")
    problems += [f"jobTemplate: {p}" for p in rayjob_rules({"spec": spec.get("jobTemplate", {})})]
    return problems


# ---------------------------------------------------------------------------------------
# Knative webhook rules (pkg/apis/autoscaling, pkg/apis/serving; see NOTES.md)

AUTOSCALING = "autoscaling.knative.dev/"
KPA, HPA = "kpa.autoscaling.knative.dev", "hpa.autoscaling.knative.dev"
ALIASES = {"minScale": "min-scale", "maxScale": "max-scale", "initialScale": "initial-scale",
           "targetUtilizationPercentage": "target-utilization-percentage",
           "targetBurstCapacity": "target-burst-capacity", "panicWindowPercentage": "panic-window-percentage",
           "panicThresholdPercentage": "panic-threshold-percentage", "scaleDownDelay": "scale-down-delay",
           "scaleToZeroPodRetentionPeriod": "scale-to-zero-pod-retention-period",
           "metricAggregationAlgorithm": "metric-aggregation-algorithm"}
KNOWN_KEYS = {"class", "min-scale", "max-scale", "initial-scale", "activation-scale", "metric", "target",
              "target-utilization-percentage", "target-burst-capacity", "window", "panic-window-percentage",
              "panic-threshold-percentage", "scale-down-delay", "scale-to-zero-pod-retention-period",
              "metric-aggregation-algorithm"}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def go_duration(text):
    """Seconds in a Go duration such as "1m30s"; ValueError if it is not one."""
    if text == "0":
        return 0.0
    if not text or _DURATION.sub("", text) != "":
        raise ValueError(f"{text!r} is not a Go duration (e.g. 30s, 1m30s)")
    return sum(float(n) * _UNIT[u] for n, u in _DURATION.findall(text))


def _number(value, kind):
    try:
        return int(value) if kind is int else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not {'an integer' if kind is int else 'a number'}") from None


def autoscaling_annotation_errors(annotations):
    """Problems with the autoscaling.knative.dev/* annotations of a revision template."""
    problems, a = [], {}
    for key, value in (annotations or {}).items():
        if not key.startswith(AUTOSCALING):
            continue
        name = ALIASES.get(key[len(AUTOSCALING):], key[len(AUTOSCALING):])
        if name not in KNOWN_KEYS:
            problems.append(f"{key}: not a Knative autoscaling annotation (typo?)")
        elif not isinstance(value, str):
            problems.append(f"{key}: the value must be a string, got {value!r}")
        else:
            a[name] = value
    cls = a.get("class", KPA)

    def check(name, test, text):
        if name in a:
            try:
                if not test(a[name]):
                    problems.append(f"{AUTOSCALING}{name}={a[name]!r}: {text}")
            except ValueError as e:
                problems.append(f"{AUTOSCALING}{name}: {e}")

    if cls not in (KPA, HPA) and cls.endswith(".knative.dev"):
        problems.append(f"{AUTOSCALING}class={cls!r}: must be {KPA} or {HPA}")
    for name in ("min-scale", "max-scale", "initial-scale"):
        check(name, lambda v: _number(v, int) >= 0, "must be an integer >= 0")
    check("initial-scale", lambda v: _number(v, int) > 0,
          "0 needs allow-zero-initial-scale in config-autoscaler (off by default)")
    try:
        lo, hi = _number(a.get("min-scale", "0"), int), _number(a.get("max-scale", "0"), int)
        if hi and lo > hi:
            problems.append(f"min-scale {lo} > max-scale {hi}")
        if "activation-scale" in a:
            act = _number(a["activation-scale"], int)
            if act < 2 or act < lo or (hi and act > hi):
                problems.append(f"activation-scale {act} must be >= 2 and within min-scale..max-scale")
    except ValueError:
        pass  # reported above
    if "metric" in a:
        if cls == KPA and a["metric"] not in ("concurrency", "rps"):
            problems.append(f"{AUTOSCALING}metric={a['metric']!r}: the KPA supports concurrency or rps")
        if not a["metric"]:
            problems.append(f"{AUTOSCALING}metric: empty")
    check("target", lambda v: _number(v, float) >= 0.01, "must be a number >= 0.01")
    check("target-utilization-percentage", lambda v: 1 <= _number(v, float) <= 100, "must be 1..100")
    check("target-burst-capacity", lambda v: _number(v, float) >= 0 or _number(v, float) == -1, "must be >= 0 or -1")
    check("panic-window-percentage", lambda v: 1 <= _number(v, float) <= 100, "must be 1..100")
    check("panic-threshold-percentage", lambda v: 110 <= _number(v, float) <= 1000, "must be 110..1000")
    check("window", lambda v: 6 <= go_duration(v) <= 3600 and go_duration(v) == int(go_duration(v)),
          "must be 6s..1h in whole seconds")
    check("scale-down-delay", lambda v: 0 <= go_duration(v) <= 3600 and go_duration(v) == int(go_duration(v)),
          "must be 0s..1h in whole seconds")
    check("scale-to-zero-pod-retention-period", lambda v: 0 <= go_duration(v) <= 3600, "must be 0s..1h")
    check("metric-aggregation-algorithm",
          lambda v: v in ("linear", "weighted-exponential", "weightedExponential"),
          "must be linear or weighted-exponential")
    if cls == HPA and ("window" in a or "metric-aggregation-algorithm" in a):
        problems.append("window and metric-aggregation-algorithm apply to the KPA only")
    return problems


def knative_rules(svc, features):
    """Webhook rules for a Knative Service, given config-features' data (``features``)."""
    problems = traffic_rules(svc)
    for key in (svc.get("metadata", {}).get("annotations") or {}):
        if key.startswith(AUTOSCALING.rstrip("/")):
            problems.append(f"metadata.annotations[{key}]: autoscaling annotations go on "
                            "spec.template.metadata.annotations; the webhook rejects them on the Service")
    template = svc.get("spec", {}).get("template", {})
    problems += autoscaling_annotation_errors(template.get("metadata", {}).get("annotations"))
    pod = template.get("spec", {})
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for v in volumes.values():
        pvc = v.get("persistentVolumeClaim")
        if pvc is None:
            continue
        if features.get("kubernetes.podspec-persistent-volume-claim") != "enabled":
            problems.append(f"volume {v['name']}: a PVC needs kubernetes.podspec-persistent-volume-claim=enabled "
                            "in config-features")
        if not pvc.get("readOnly") and features.get("kubernetes.podspec-persistent-volume-write") != "enabled":
            problems.append(f"volume {v['name']}: a writable PVC needs kubernetes.podspec-persistent-volume-write=enabled")
    for c in pod.get("containers", []):
        for m in c.get("volumeMounts", []):
            v = volumes.get(m["name"])
            if v is None:
                problems.append(f"container {c['name']}: volumeMount {m['name']} has no volume")
                continue
            if v.get("persistentVolumeClaim", {}).get("readOnly") and not m.get("readOnly"):
                problems.append(f"container {c['name']}: mount of read-only PVC {m['name']} must set readOnly: true")
            if not ({"persistentVolumeClaim", "emptyDir", "ephemeral"} & set(v)) and not m.get("readOnly"):
                problems.append(f"container {c['name']}: mount {m['name']} must be readOnly")
    return problems


# Knative's rules for a Service's traffic and named revisions (pkg/apis/serving/v1:
# route_validation.go validateTrafficList / TrafficTarget.Validate, revision_validation.go
# validateRevisionName; route_defaults.go fills latestRevision first)

_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_QUALIFIED = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def dns1035_label(text):
    return isinstance(text, str) and len(text) <= 63 and _DNS1035.fullmatch(text) is not None


def traffic_rules(svc):
    """What the webhook rejects in a Service's spec.traffic and spec.template.metadata.name."""
    problems, name = [], svc.get("metadata", {}).get("name", "")
    revision = (svc.get("spec", {}).get("template", {}).get("metadata") or {}).get("name")
    if revision is not None:
        if not dns1035_label(revision):
            problems.append(f"spec.template.metadata.name {revision!r}: not a DNS-1035 label")
        elif not revision.startswith(name + "-"):
            problems.append(f"spec.template.metadata.name {revision!r} must have the prefix {name + '-'!r}")
    traffic = svc.get("spec", {}).get("traffic")
    if traffic is None:
        return problems  # defaulted to 100% latestRevision
    total, tags = 0, {}
    for i, t in enumerate(traffic):
        where = f"spec.traffic[{i}]"
        rev, latest = t.get("revisionName", ""), t.get("latestRevision")
        if latest is None:
            latest = rev == ""  # the webhook's default
        if latest and rev:
            problems.append(f"{where}: may not set revisionName {rev!r} when latestRevision is true")
        if not latest and not rev:
            problems.append(f"{where}: latestRevision false needs a revisionName")
        if rev and not (len(rev) <= 63 and _QUALIFIED.fullmatch(rev)):
            problems.append(f"{where}.revisionName {rev!r}: not a qualified name")
        if "configurationName" in t:
            problems.append(f"{where}: configurationName is not allowed in a Service (it has its own)")
        if "url" in t:
            problems.append(f"{where}: url is not allowed in spec (status only)")
        percent = t.get("percent")
        if percent is not None:
            if not 0 <= percent <= 100:
                problems.append(f"{where}.percent {percent} is outside 0..100")
            total += percent
        tag = t.get("tag", "")
        if tag:
            if not dns1035_label(tag):
                problems.append(f"{where}.tag {tag!r}: not a DNS-1035 label")
            if tag in tags:
                problems.append(f"{where}.tag {tag!r}: multiple definitions (also spec.traffic[{tags[tag]}])")
            tags.setdefault(tag, i)
    if total != 100:
        problems.append(f"spec.traffic: targets sum to {total}%, want 100")
    return problems


# ---------------------------------------------------------------------------------------
# This project's own rules


def configmaps(docs):
    return {d["metadata"]["name"]: d for d in find(docs, "ConfigMap")}


def env_of(container, docs=()):
    """A container's environment as Kubernetes builds it: envFrom ConfigMaps (found in
    ``docs``) first, then env over them. A valueFrom entry maps to its source (a dict)."""
    env, maps = {}, configmaps(docs)
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name")
        if ref in maps:
            env.update({source.get("prefix", "") + k: v for k, v in maps[ref].get("data", {}).items()})
    for e in container.get("env", []):
        env[e["name"]] = e["valueFrom"] if "valueFrom" in e else e.get("value")
    return env


def missing_configmaps(container, docs):
    """The ConfigMaps that ``container`` reads with envFrom and ``docs`` do not hold."""
    maps = configmaps(docs)
    return [s["configMapRef"]["name"] for s in container.get("envFrom", [])
            if "configMapRef" in s and s["configMapRef"]["name"] not in maps]


def pinned_version(requirements, package):
    """The version ``package`` is pinned to (==) in a requirements file."""
    with open(os.path.join(ROOT, requirements)) as f:
        for line in f:
            m = re.match(rf"^{re.escape(package)}(\[[^\]]*\])?==([^\s;#]+)", line.strip())
            if m:
                return m.group(2)
    raise AssertionError(f"{package} is not pinned with == in {requirements}")


def _resources_errors(where, c):
    res = c.get("resources", {})
    return [f"{where}: resources.{kind}.{r} is not set"
            for kind in ("requests", "limits") for r in ("cpu", "memory") if r not in res.get(kind, {})]


def _ksa_errors(where, pod, docs):
    name = pod.get("serviceAccountName")
    ksa = [d for d in find(docs, "ServiceAccount") if d["metadata"]["name"] == name]
    if not name or not ksa:
        return [f"{where}: serviceAccountName {name!r} is not a ServiceAccount in the overlay"]
    gsa = (ksa[0]["metadata"].get("annotations") or {}).get("iam.gke.io/gcp-service-account", "")
    if not re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z][a-z0-9-]{4,28}[a-z0-9]\.iam\.gserviceaccount\.com", gsa):
        return [f"{where}: KSA {name} has no Workload Identity annotation naming a Google SA (got {gsa!r})"]
    return []


def ray_jobs(docs):
    """(where, RayJob) for each RayJob and, as a RayJob of the same spec, each RayCronJob's job template."""
    jobs = [(f"RayJob/{j['metadata']['name']}", j) for j in find(docs, "RayJob", "ray.io")]
    jobs += [(f"RayCronJob/{c['metadata']['name']}", {"metadata": c["metadata"], "spec": c["spec"]["jobTemplate"]})
             for c in find(docs, "RayCronJob", "ray.io")]
    return jobs


def ray_pods(job):
    """(where, pod spec) for the head, each worker group and the submitter."""
    cluster = job["spec"]["rayClusterSpec"]
    pods = [("head", cluster["headGroupSpec"]["template"]["spec"])]
    pods += [(f"worker group {g['groupName']}", g["template"]["spec"]) for g in cluster.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in job["spec"]:
        pods.append(("submitter", job["spec"]["submitterPodTemplate"]["spec"]))
    return pods


CR_NAME_LABEL = "metadata.labels['ray.io/originated-from-cr-name']"


def shell_vars(command):
    """The $NAME / ${NAME} variables a shell would expand in ``command``."""
    return set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", command))


def _rayjob_errors(job, docs, pvcs, ray_version):
    problems, spec = [], job["spec"]
    if spec["rayClusterSpec"].get("rayVersion") != ray_version:
        problems.append(f"rayVersion {spec['rayClusterSpec'].get('rayVersion')!r} is not the pinned ray=={ray_version}")
    head_env = env_of(spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0], docs)
    pods = ray_pods(job)
    submitter = dict(pods).get("submitter")
    submitter_env = env_of(submitter["containers"][0], docs) if submitter else {}
    entrypoint = spec.get("entrypoint", "")
    # KubeRay's submitter runs the entrypoint through bash: its variables expand there.
    for var in sorted(shell_vars(entrypoint) - set(submitter_env)):
        problems.append(f"entrypoint: ${var} expands in the submitter, whose env does not set it")
    # A run named after the RayJob: new for every RayJob, the same for its retries.
    import shlex

    words = shlex.split(entrypoint)
    run_name = words[words.index("--run-name") + 1] if "--run-name" in words[:-1] else None
    source = submitter_env.get(run_name[1:]) if run_name and run_name.startswith("$") else None
    if not (isinstance(source, dict) and source.get("fieldRef", {}).get("fieldPath") == CR_NAME_LABEL):
        problems.append("entrypoint: --run-name must be a submitter variable read from the pod label "
                        "ray.io/originated-from-cr-name (the RayJob's name), so each RayJob is a new run "
                        "and its retries resume it")
    if "RUN_NAME" in head_env:
        problems.append("head env RUN_NAME: a fixed run name makes every RayJob resume the same run")
    if "DIGITDRAW_ACTOR=" not in entrypoint:
        problems.append("entrypoint: set DIGITDRAW_ACTOR, so that LATEST's history names the run that moved it")
    for where, pod in pods:
        problems += _ksa_errors(where, pod, docs)
        for c in pod["containers"]:
            problems += [f"{where}: envFrom ConfigMap {m} is not in the overlay" for m in missing_configmaps(c, docs)]
            env = env_of(c, docs)
            if env.get("RAY_AUTH_MODE") != "disabled":
                problems.append(f"{where}: RAY_AUTH_MODE must be 'disabled' like every other Ray process, "
                                f"got {env.get('RAY_AUTH_MODE')!r}")
            if where != "submitter" and env.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "1":
                problems.append(f"{where}: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER must be \"1\": the training CLI "
                                "defaults it to 0 (loopback, for one machine), which breaks a multi-node cluster")
            problems += _resources_errors(f"{where} container {c['name']}", c)
        if where == "submitter":
            continue
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", [])
                  if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: claims[m["name"]] for m in pod["containers"][0].get("volumeMounts", [])
                  if m["name"] in claims}
        for key in ("STORAGE_PATH", "DATA_DIR"):
            path = head_env.get(key, "")
            mount = next((m for m in mounts if path.startswith(m.rstrip("/") + "/")), None)
            if mount is None:
                problems.append(f"{where}: {key}={path!r} is not on a mounted PVC")
            elif mounts[mount] not in pvcs:
                problems.append(f"{where}: PVC {mounts[mount]} is not in the overlay")
            elif "ReadWriteMany" not in pvcs[mounts[mount]]["spec"]["accessModes"]:
                problems.append(f"PVC {mounts[mount]}: every Ray node mounts it, so it must be ReadWriteMany")
    for key in ("NUM_WORKERS", "EPOCHS", "STORAGE_PATH", "PUBLISH_URIS", "TRAIN_DATA", "CHECKPOINT_MIRROR"):
        if not head_env.get(key):
            problems.append(f"head env {key} is not set: the training CLI reads it")
    return problems


def _raycronjob_errors(cron, svcs, docs):
    problems, spec = [], cron["spec"]
    job = spec["jobTemplate"]
    # No concurrencyPolicy: a job and its retries must be over before the next tick.
    worst = (1 + job.get("backoffLimit", 0)) * job.get("activeDeadlineSeconds", float("inf"))
    try:
        interval = cron_min_interval(spec["schedule"])
    except ValueError:
        interval = 0  # reported by raycronjob_rules
    if worst > interval / 2:
        problems.append(f"(1 + backoffLimit) x activeDeadlineSeconds = {worst} s is more than half the "
                        f"{interval:.0f} s between ticks: two retrainings could overlap")
    head_env = env_of(job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0], docs)
    if head_env.get("INIT_FROM") != "latest":
        problems.append(f"head env INIT_FROM must be 'latest' (warm start), got {head_env.get('INIT_FROM')!r}")
    served = {env_of(s["spec"]["template"]["spec"]["containers"][0], docs).get("FEEDBACK_URI") for s in svcs}
    if not head_env.get("FEEDBACK_URI") or (svcs and head_env.get("FEEDBACK_URI") not in served):
        problems.append(f"head env FEEDBACK_URI {head_env.get('FEEDBACK_URI')!r} is not the feedback store "
                        f"the Knative Service writes ({sorted(map(str, served))})")
    return problems


def deployment_rules(docs):
    """This project's promises about one rendered overlay."""
    problems = []
    pvcs = {d["metadata"]["name"]: d for d in find(docs, "PersistentVolumeClaim")}
    namespaces = {d["metadata"]["name"] for d in find(docs, "Namespace")}
    for d in docs:
        if d["kind"] != "Namespace" and d["metadata"].get("namespace") not in namespaces:
            problems.append(f"{d['kind']}/{d['metadata']['name']}: namespace {d['metadata'].get('namespace')!r} "
                            "is not the overlay's Namespace")
        text = yaml.safe_dump(d)
        for placeholder in ("PROJECT_ID", "REGION", "BUCKET", "FEEDBACK_BUCKET", "AR_REPO", "IMAGE_TAG", "GPU_TYPE",
                            "NAMESPACE", "REVIEW_DOMAIN"):
            if re.search(rf"\b{placeholder}\b", text):
                problems.append(f"{d['kind']}/{d['metadata']['name']}: placeholder {placeholder} left unfilled")
        if "GOOGLE_APPLICATION_CREDENTIALS" in text or re.search(r"\bsecret(Name|KeyRef)?\b", text):
            problems.append(f"{d['kind']}/{d['metadata']['name']}: no keys or secrets: GCS access is Workload Identity")

    ray_version = pinned_version("training/requirements.txt", "ray")
    for name, job in ray_jobs(docs):
        problems += [f"{name}: {p}" for p in _rayjob_errors(job, docs, pvcs, ray_version)]
    svcs = find(docs, "Service", "serving.knative.dev")
    for cron in find(docs, "RayCronJob", "ray.io"):
        problems += [f"RayCronJob/{cron['metadata']['name']}: {p}" for p in _raycronjob_errors(cron, svcs, docs)]

    for svc in find(docs, "Service", "serving.knative.dev"):
        template = svc["spec"]["template"]
        ann, pod = template["metadata"].get("annotations", {}), template["spec"]
        if ann.get(AUTOSCALING + "min-scale") != "0":
            problems.append("knative: min-scale must be \"0\" (scale to zero)")
        for key in ("max-scale", "target", "metric"):
            if AUTOSCALING + key not in ann:
                problems.append(f"knative: {AUTOSCALING}{key} is not set")
        cc = pod.get("containerConcurrency", 0)
        if not cc or not pod.get("timeoutSeconds"):
            problems.append("knative: containerConcurrency and timeoutSeconds must be set")
        elif float(ann.get(AUTOSCALING + "target", "0")) > cc:
            problems.append("knative: the soft target exceeds containerConcurrency, the hard limit")
        problems += _ksa_errors("knative", pod, docs)
        (c,) = pod["containers"]
        if c.get("command") != ["python", "-m", "service"]:
            problems.append(f"knative: command must be python -m service, got {c.get('command')}")
        if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
            problems.append("knative: readiness probe must be GET /readyz")
        if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
            problems.append("knative: liveness probe must be GET /healthz")
        problems += _resources_errors("knative container", c)
        sc = c.get("securityContext", {})
        if not (sc.get("runAsNonRoot") and sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                and sc.get("capabilities", {}).get("drop") == ["ALL"]):
            problems.append("knative: container must run as non-root, read-only root fs, no privilege escalation, "
                            "capabilities drop ALL")
        env = env_of(c, docs)
        if not env.get("MODEL_URI"):
            problems.append("knative: MODEL_URI is not set")
        feedback = env.get("FEEDBACK_URI") or ""
        if not feedback.startswith("gs://"):
            problems.append(f"knative: FEEDBACK_URI must be a gs:// bucket, got {feedback!r}")
        elif env.get("MODEL_URI", "").split("/")[:3] == feedback.split("/")[:3]:
            problems.append("knative: FEEDBACK_URI must be a bucket of its own: the server may only create "
                            "objects there, and only read the models")
    return problems
