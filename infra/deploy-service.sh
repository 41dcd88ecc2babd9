#!/usr/bin/env bash
# Deploy the Knative Service and print its URL. It becomes ready once it has
# loaded the model training published (infra/train.sh). Safe to rerun: a changed
# manifest or image makes a new revision.
#
# usage: infra/deploy-service.sh [--dry-run] [--overlay gke|gpu|gke-pvc]
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
parse_args "$@"
need kubectl

step "serving objects of overlay $OVERLAY (everything but the RayJob)"
apply_overlay 'app.kubernetes.io/component!=training'
run kubectl wait ksvc "$KSVC" --namespace "$NAMESPACE" --for condition=Ready --timeout 300s

step "URL"
run kubectl get ksvc "$KSVC" --namespace "$NAMESPACE" -o jsonpath='{.status.url}{"\n"}'
