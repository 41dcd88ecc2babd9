#!/usr/bin/env bash
# Create the bucket and the two Google service accounts, and bind them through
# Workload Identity: the trainer KSA may write objects, the server KSA may only read
# them. No keys are created. Safe to rerun.
#
# usage: infra/setup-storage.sh [--dry-run]
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
parse_args "$@"
need gcloud

step "bucket gs://$BUCKET"
if exists gcloud storage buckets describe "gs://$BUCKET" --project "$PROJECT_ID"; then
  echo "bucket gs://$BUCKET exists"
else
  run gcloud storage buckets create "gs://$BUCKET" --project "$PROJECT_ID" --location "$REGION" \
    --uniform-bucket-level-access
fi

step "Google service accounts"
for gsa in "$TRAINER_GSA" "$SERVER_GSA"; do
  if exists gcloud iam service-accounts describe "$gsa" --project "$PROJECT_ID"; then
    echo "service account $gsa exists"
  else
    run gcloud iam service-accounts create "${gsa%%@*}" --project "$PROJECT_ID" --display-name "DigitDraw ${gsa%%@*}"
  fi
done

step "bucket access: the trainer writes (checkpoints, models, LATEST), the server reads"
# add-iam-policy-binding leaves an existing binding as it is.
run gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" --project "$PROJECT_ID" \
  --member "serviceAccount:$TRAINER_GSA" --role roles/storage.objectUser
run gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" --project "$PROJECT_ID" \
  --member "serviceAccount:$SERVER_GSA" --role roles/storage.objectViewer

step "Workload Identity: KSA $NAMESPACE/<name> may act as its Google service account"
run gcloud iam service-accounts add-iam-policy-binding "$TRAINER_GSA" --project "$PROJECT_ID" \
  --role roles/iam.workloadIdentityUser --member "serviceAccount:${PROJECT_ID}.svc.id.goog[$NAMESPACE/$TRAINER_KSA]"
run gcloud iam service-accounts add-iam-policy-binding "$SERVER_GSA" --project "$PROJECT_ID" \
  --role roles/iam.workloadIdentityUser --member "serviceAccount:${PROJECT_ID}.svc.id.goog[$NAMESPACE/$SERVER_KSA]"
