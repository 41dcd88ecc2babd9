#!/usr/bin/env bash
# Delete everything the other scripts created: the Knative Service, the RayJobs and
# the nightly RayCronJob, the review page's load balancer and address, the namespace
# (and with it the PVC's Filestore instance), the operators, the cluster, the images, the
# service accounts, the bucket with its models and checkpoints and the feedback bucket
# with the corrections people sent. Asks first unless --yes; --keep-bucket keeps both
# buckets.
#
# usage: infra/teardown.sh [--dry-run] [--yes] [--keep-bucket]
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
parse_args "$@"
need gcloud kubectl helm
yes=0 keep_bucket=0
for arg in "${SCRIPT_ARGS[@]}"; do
  case "$arg" in
    --yes) yes=1 ;;
    --keep-bucket) keep_bucket=1 ;;
    *) echo "error: unknown option $arg" >&2; exit 2 ;;
  esac
done
if [[ $DRY_RUN == 0 && $yes == 0 ]]; then
  read -r -p "Delete cluster $CLUSTER, its workloads and (unless --keep-bucket) gs://$BUCKET and gs://$FEEDBACK_BUCKET in $PROJECT_ID? [y/N] " answer
  [[ $answer == [yY]* ]] || exit 1
fi

if exists gcloud container clusters describe "$CLUSTER" --region "$REGION" --project "$PROJECT_ID" || [[ $DRY_RUN == 1 ]]; then
  step "workloads (the PVC goes with the namespace, so Filestore billing stops)"
  run kubectl delete ksvc "$KSVC" --namespace "$NAMESPACE" --ignore-not-found
  # The review page's load balancer goes with its Ingress (before the namespace, so the
  # Ingress controller is still there to remove it); its reserved address goes below.
  run kubectl delete ingress "$REVIEW" --namespace "$NAMESPACE" --ignore-not-found --wait
  run kubectl delete raycronjob,rayjob --all --namespace "$NAMESPACE" --ignore-not-found
  run kubectl delete namespace "$NAMESPACE" --ignore-not-found --wait
  run helm uninstall kuberay-operator --namespace kuberay-system --ignore-not-found
  step "cluster $CLUSTER"
  run gcloud container clusters delete "$CLUSTER" --region "$REGION" --project "$PROJECT_ID" --quiet
fi

step "the review page's address"
if exists gcloud compute addresses describe "$REVIEW" --global --project "$PROJECT_ID" || [[ $DRY_RUN == 1 ]]; then
  run gcloud compute addresses delete "$REVIEW" --global --project "$PROJECT_ID" --quiet
fi

step "images and service accounts"
if exists gcloud artifacts repositories describe "$AR_REPO" --location "$REGION" --project "$PROJECT_ID" || [[ $DRY_RUN == 1 ]]; then
  run gcloud artifacts repositories delete "$AR_REPO" --location "$REGION" --project "$PROJECT_ID" --quiet
fi
for gsa in "$TRAINER_GSA" "$SERVER_GSA" "$REVIEW_GSA"; do
  if exists gcloud iam service-accounts describe "$gsa" --project "$PROJECT_ID" || [[ $DRY_RUN == 1 ]]; then
    run gcloud iam service-accounts delete "$gsa" --project "$PROJECT_ID" --quiet
  fi
done

if [[ $keep_bucket == 0 ]]; then
  for bucket in "$BUCKET" "$FEEDBACK_BUCKET"; do
    step "bucket gs://$bucket"
    if exists gcloud storage buckets describe "gs://$bucket" --project "$PROJECT_ID" || [[ $DRY_RUN == 1 ]]; then
      run gcloud storage rm --recursive "gs://$bucket" --project "$PROJECT_ID"
    fi
  done
fi
