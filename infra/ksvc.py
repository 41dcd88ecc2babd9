"""The Knative Service's revisions and traffic, for infra/deploy-service.sh and infra/rollout.sh.

Reads what `kubectl kustomize infra/overlays/<overlay>` prints on stdin and writes
manifests for `kubectl apply -f -` on stdout:

  stable          every object, the Service's revision named (see below); deploy-service.sh
  stable-name     only the name of that revision
  canary V P      the Service: a revision pinned to model version V (MODEL_VERSION) with the
                  tag "candidate" and P% of the traffic, the stable revision the rest
  pinned          the Service: the stable revision, 100% of the traffic, no candidate

Revisions are named here, not by Knative, so that a rollout can route to the stable
revision by name and go back to it without a new revision: "<service>-latest-<hash>"
for the one that follows LATEST, "<service>-<version>-<hash>" for a candidate, where the
hash is of the revision template. The same manifest always gives the same name, and a
changed one a new name, as Knative requires of named revisions.
"""
import copy
import hashlib
import json
import re
import sys

import yaml

CANDIDATE_TAG = "candidate"
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # service/config.py's MODEL_VERSION


class UsageError(Exception):
    pass


def knative_service(docs):
    found = [d for d in docs if d.get("kind") == "Service" and d.get("apiVersion", "").startswith("serving.knative.dev/")]
    if len(found) != 1:
        raise UsageError(f"expected one Knative Service on stdin (kubectl kustomize infra/overlays/...), found {len(found)}")
    return found[0]


def revision_name(service, template, label):
    """``<service>-<label>-<8 hex of the template>``, cut to the 63 characters of a DNS label."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]
    label = re.sub(r"[^a-z0-9-]+", "-", label.lower()).strip("-")
    label = label[:63 - len(service) - len(digest) - 2].rstrip("-")
    return f"{service}-{label}-{digest}"


def named(svc, template, label):
    """A copy of ``svc`` whose revision template is ``template``, named for it."""
    out = copy.deepcopy(svc)
    template = copy.deepcopy(template)
    template.setdefault("metadata", {}).pop("name", None)
    template["metadata"]["name"] = revision_name(svc["metadata"]["name"], template, label)
    out["spec"]["template"] = template
    return out


def stable(svc):
    """The Service with its revision (the one that follows LATEST) named."""
    return named(svc, svc["spec"]["template"], "latest")


def pinned(svc):
    """The stable revision with all the traffic."""
    out = stable(svc)
    out["spec"]["traffic"] = [{"revisionName": out["spec"]["template"]["metadata"]["name"], "percent": 100}]
    return out


def canary(svc, version, percent):
    """A candidate revision serving exactly ``version`` with ``percent``% of the traffic."""
    if not VERSION.fullmatch(version):
        raise UsageError(f"{version!r} is not a model version (like 20261202T000028Z-a6785ae6)")
    if not 0 <= percent <= 100:
        raise UsageError(f"--percent {percent}: give a whole number from 0 to 100")
    template = copy.deepcopy(svc["spec"]["template"])
    (container,) = template["spec"]["containers"]
    env = [e for e in container.get("env", []) if e["name"] != "MODEL_VERSION"]
    container["env"] = env + [{"name": "MODEL_VERSION", "value": version}]
    out = named(svc, template, version)
    out["spec"]["traffic"] = [
        {"revisionName": stable(svc)["spec"]["template"]["metadata"]["name"], "percent": 100 - percent},
        {"revisionName": out["spec"]["template"]["metadata"]["name"], "percent": percent, "tag": CANDIDATE_TAG},
    ]
    return out


def main(argv, stdin, stdout):
    if not argv or argv[0] not in ("stable", "stable-name", "canary", "pinned") or \
            len(argv) != (3 if argv[0] == "canary" else 1):
        raise UsageError("usage: python infra/ksvc.py stable|stable-name|pinned|canary VERSION PERCENT < manifests")
    docs = [d for d in yaml.safe_load_all(stdin) if d]
    svc = knative_service(docs)
    command = argv[0]
    if command == "stable":
        out = [stable(d) if d is svc else d for d in docs]
    elif command == "stable-name":
        print(stable(svc)["spec"]["template"]["metadata"]["name"], file=stdout)
        return
    elif command == "pinned":
        out = [pinned(svc)]
    else:
        try:
            percent = int(argv[2])
        except ValueError:
            raise UsageError(f"--percent {argv[2]!r}: give a whole number from 0 to 100") from None
        out = [canary(svc, argv[1], percent)]
    yaml.safe_dump_all(out, stdout, sort_keys=False)


if __name__ == "__main__":
    try:
        main(sys.argv[1:], sys.stdin, sys.stdout)
    except UsageError as e:
        sys.exit(f"error: {e}")
