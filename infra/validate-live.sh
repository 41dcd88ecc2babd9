#!/usr/bin/env bash
# Validate every overlay against a live cluster: the API server's own schemas
# (strict field validation) and the KubeRay and Knative webhooks, with nothing
# created (`kubectl apply --dry-run=server`). The offline equivalent is
# tests/test_k8s_manifests.py. Needs a cluster with the operators installed
# (infra/install-operators.sh); creates the namespace if it is missing.
#
# usage: infra/validate-live.sh [--dry-run]
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
parse_args "$@"
need kubectl

step "namespace $NAMESPACE (server-side dry runs of namespaced objects need it to exist)"
if ! exists kubectl get namespace "$NAMESPACE"; then
  run kubectl create namespace "$NAMESPACE"
fi

for dir in "$INFRA_DIR"/overlays/*/; do
  overlay="$(basename "$dir")"
  step "overlay $overlay"
  run_sh "kubectl kustomize $(quoted "$ROOT/infra/overlays/$overlay") | kubectl apply --dry-run=server --validate=strict -f -"
done
