#!/usr/bin/env bash
# Deploy the review page (python -m training.review): its Deployment, ClusterIP Service,
# BackendConfig (Identity-Aware Proxy on) and Workload Identity KSA. It is reachable only
# inside the cluster, and refuses every request until it is exposed. --expose puts it on
# the internet behind IAP: a reserved global address, an HTTPS load balancer (Ingress,
# review/expose) with a Google-managed certificate for REVIEW_DOMAIN, IAP access for each
# of REVIEWERS, and the audience the app checks IAP's signed header against. Safe to rerun.
#
# usage: infra/deploy-review.sh [--dry-run] [--overlay gke|gpu|gke-pvc] [--expose]
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
parse_args "$@"
need kubectl
expose=0
for arg in "${SCRIPT_ARGS[@]}"; do
  case "$arg" in
    --expose) expose=1 ;;
    *) echo "error: unknown option $arg" >&2; exit 2 ;;
  esac
done
if [[ $expose == 1 ]]; then
  need gcloud
fi
ns=(--namespace "$NAMESPACE")

step "namespace $NAMESPACE"
if ! exists kubectl get namespace "$NAMESPACE"; then
  run kubectl create namespace "$NAMESPACE"
fi

step "the review page's objects of overlay $OVERLAY (inside the cluster only)"
apply_overlay 'app.kubernetes.io/component=review'
run kubectl rollout status deployment "$REVIEW" "${ns[@]}" --timeout 300s

if [[ $expose == 0 ]]; then
  echo "the review page runs inside the cluster and refuses every request until"
  echo "infra/deploy-review.sh --expose puts Identity-Aware Proxy in front of it at https://$REVIEW_DOMAIN/"
  exit 0
fi

step "Identity-Aware Proxy's API"
run gcloud services enable iap.googleapis.com --project "$PROJECT_ID"

step "global address $REVIEW for $REVIEW_DOMAIN"
if exists gcloud compute addresses describe "$REVIEW" --global --project "$PROJECT_ID"; then
  echo "address $REVIEW exists"
else
  run gcloud compute addresses create "$REVIEW" --global --project "$PROJECT_ID"
fi
query gcloud compute addresses describe "$REVIEW" --global --project "$PROJECT_ID" --format 'value(address)'
echo "point a DNS A record for $REVIEW_DOMAIN at ${REPLY:-the address above}: the certificate is issued once it resolves"

step "the HTTPS load balancer (Ingress $REVIEW) and its certificate"
run_sh "kubectl kustomize $(quoted "$ROOT/review/expose") | kubectl apply -l 'app.kubernetes.io/component=review' -f -"

step "the load balancer's backend service (the Ingress controller creates it within minutes)"
# Its name is k8s1-<cluster uid>-<namespace>-<service>-<port>-<hash> (container-native backends).
list=(gcloud compute backend-services list --global --project "$PROJECT_ID"
  --filter "name~-$NAMESPACE-$REVIEW-80-" --format 'value(name,id)')
echo "+ $(quoted "${list[@]}")  # every 15 s, for up to 10 minutes"
backend="<backend service>" backend_id="<its id>"
if [[ $DRY_RUN == 0 ]]; then
  for _ in $(seq 40); do
    read -r backend backend_id < <("${list[@]}") || true
    [[ -n ${backend_id:-} ]] && break
    sleep 15
  done
  if [[ -z ${backend_id:-} ]]; then
    echo "error: no backend service for Ingress $REVIEW after 10 minutes; see kubectl describe ingress $REVIEW -n $NAMESPACE" >&2
    exit 1
  fi
fi

step "IAP access for each of REVIEWERS ($REVIEWERS)"
IFS=, read -r -a reviewers <<<"$REVIEWERS"
for reviewer in "${reviewers[@]}"; do
  run gcloud iap web add-iam-policy-binding --resource-type backend-services --service "$backend" \
    --member "user:$reviewer" --role roles/iap.httpsResourceAccessor --project "$PROJECT_ID"
done

step "the audience the review page checks IAP's signed header against"
query gcloud projects describe "$PROJECT_ID" --format 'value(projectNumber)'
audience="/projects/${REPLY:-<project number>}/global/backendServices/$backend_id"
run_sh "kubectl create configmap $REVIEW-iap $(quoted "${ns[@]}") --from-literal $(quoted "REVIEW_IAP_AUDIENCE=$audience") --dry-run=client -o yaml | kubectl apply -f -"
run kubectl rollout restart deployment "$REVIEW" "${ns[@]}"
run kubectl rollout status deployment "$REVIEW" "${ns[@]}" --timeout 300s
echo "the review page: https://$REVIEW_DOMAIN/ (the certificate can take up to an hour once DNS resolves)"
