#!/usr/bin/env bash
# Create the model bucket, the feedback bucket and the three Google service accounts, and
# bind them through Workload Identity. Least privilege: the trainer may write models
# and only read feedback; the server may only read models and only create feedback
# records, never overwrite or delete one; the review page may only read feedback and
# create decisions, never overwrite or delete one. No keys are created. Safe to rerun.
#
# usage: infra/setup-storage.sh [--dry-run]
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
parse_args "$@"
need gcloud

for bucket in "$BUCKET" "$FEEDBACK_BUCKET"; do
  step "bucket gs://$bucket"
  if exists gcloud storage buckets describe "gs://$bucket" --project "$PROJECT_ID"; then
    echo "bucket gs://$bucket exists"
  else
    run gcloud storage buckets create "gs://$bucket" --project "$PROJECT_ID" --location "$REGION" \
      --uniform-bucket-level-access
  fi
done

step "Google service accounts"
for gsa in "$TRAINER_GSA" "$SERVER_GSA" "$REVIEW_GSA"; do
  if exists gcloud iam service-accounts describe "$gsa" --project "$PROJECT_ID"; then
    echo "service account $gsa exists"
  else
    run gcloud iam service-accounts create "${gsa%%@*}" --project "$PROJECT_ID" --display-name "DigitDraw ${gsa%%@*}"
  fi
done

# add-iam-policy-binding leaves an existing binding as it is.
step "model bucket access: the trainer writes (checkpoints, models, LATEST), the server reads"
run gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" --project "$PROJECT_ID" \
  --member "serviceAccount:$TRAINER_GSA" --role roles/storage.objectUser
run gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" --project "$PROJECT_ID" \
  --member "serviceAccount:$SERVER_GSA" --role roles/storage.objectViewer

step "feedback bucket access: the server only creates records, the trainer only reads them"
# objectCreator has storage.objects.create and nothing else: no read, no list, no
# overwrite (which needs delete), no delete. Records are create-only anyway.
run gcloud storage buckets add-iam-policy-binding "gs://$FEEDBACK_BUCKET" --project "$PROJECT_ID" \
  --member "serviceAccount:$SERVER_GSA" --role roles/storage.objectCreator
# Training reads records and decisions and writes nothing there. Deciding on a record is
# a person's review: the review CLI with their own identity, or the review page below.
run gcloud storage buckets add-iam-policy-binding "gs://$FEEDBACK_BUCKET" --project "$PROJECT_ID" \
  --member "serviceAccount:$TRAINER_GSA" --role roles/storage.objectViewer

step "feedback bucket access: the review page reads records and decisions, and only creates decisions"
# objectViewer (read, list) and objectCreator (create): decisions are create-only objects,
# and neither role may overwrite or delete a record or a decision. Nothing on the model bucket.
run gcloud storage buckets add-iam-policy-binding "gs://$FEEDBACK_BUCKET" --project "$PROJECT_ID" \
  --member "serviceAccount:$REVIEW_GSA" --role roles/storage.objectViewer
run gcloud storage buckets add-iam-policy-binding "gs://$FEEDBACK_BUCKET" --project "$PROJECT_ID" \
  --member "serviceAccount:$REVIEW_GSA" --role roles/storage.objectCreator

step "Workload Identity: KSA $NAMESPACE/<name> may act as its Google service account"
run gcloud iam service-accounts add-iam-policy-binding "$TRAINER_GSA" --project "$PROJECT_ID" \
  --role roles/iam.workloadIdentityUser --member "serviceAccount:${PROJECT_ID}.svc.id.goog[$NAMESPACE/$TRAINER_KSA]"
run gcloud iam service-accounts add-iam-policy-binding "$SERVER_GSA" --project "$PROJECT_ID" \
  --role roles/iam.workloadIdentityUser --member "serviceAccount:${PROJECT_ID}.svc.id.goog[$NAMESPACE/$SERVER_KSA]"
run gcloud iam service-accounts add-iam-policy-binding "$REVIEW_GSA" --project "$PROJECT_ID" \
  --role roles/iam.workloadIdentityUser --member "serviceAccount:${PROJECT_ID}.svc.id.goog[$NAMESPACE/$REVIEW_KSA]"
