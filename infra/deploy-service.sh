#!/usr/bin/env bash
# Deploy the Knative Service and print its URL. It becomes ready once it has
# loaded the model training published (infra/train.sh). Its revision is named after
# its template (infra/ksvc.py), so infra/rollout.sh can route to it by name. Safe to
# rerun: a changed manifest or image tag makes a new revision, an unchanged one
# nothing; a canary in progress ends (all traffic to this revision, as rollout.sh abort).
#
# usage: infra/deploy-service.sh [--dry-run] [--overlay gke|gpu|gke-pvc]
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
parse_args "$@"
need kubectl
need_venv

step "serving objects of overlay $OVERLAY (everything but training and the review page), the revision named"
run_sh "kubectl kustomize $(quoted "$ROOT/infra/overlays/$OVERLAY") | $(quoted "$VENV_PYTHON" "$INFRA_DIR/ksvc.py") stable | kubectl apply -l 'app.kubernetes.io/component notin (training,review)' -f -"
wait_ksvc

step "URL"
run kubectl get ksvc "$KSVC" --namespace "$NAMESPACE" -o jsonpath='{.status.url}{"\n"}'
