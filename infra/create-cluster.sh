#!/usr/bin/env bash
# Create the GKE cluster: Autopilot by default, or Standard with a CPU pool and a
# GPU pool (CLUSTER_MODE=standard in infra/config/config.env). Workload Identity
# and the Filestore and GCS FUSE CSI drivers are on in both. Safe to rerun.
#
# usage: infra/create-cluster.sh [--dry-run]
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
parse_args "$@"
need gcloud

step "APIs"
run gcloud services enable container.googleapis.com file.googleapis.com storage.googleapis.com \
  artifactregistry.googleapis.com cloudbuild.googleapis.com iam.googleapis.com --project "$PROJECT_ID"

step "cluster $CLUSTER ($CLUSTER_MODE) in $REGION"
if exists gcloud container clusters describe "$CLUSTER" --region "$REGION" --project "$PROJECT_ID"; then
  echo "cluster $CLUSTER exists"
elif [[ $CLUSTER_MODE == autopilot ]]; then
  # Autopilot: Workload Identity and the Filestore/GCS FUSE CSI drivers are always on;
  # nodes (GPU ones too) appear for the pods that ask for them and go when they end.
  run gcloud container clusters create-auto "$CLUSTER" --region "$REGION" --project "$PROJECT_ID" \
    --release-channel regular
elif [[ $CLUSTER_MODE == standard ]]; then
  # One e2-standard-4 per zone to start (a regional cluster has three zones), growing
  # to four per zone for the Ray workers.
  run gcloud container clusters create "$CLUSTER" --region "$REGION" --project "$PROJECT_ID" \
    --release-channel regular --workload-pool "${PROJECT_ID}.svc.id.goog" \
    --addons GcpFilestoreCsiDriver,GcsFuseCsiDriver,HttpLoadBalancing \
    --machine-type e2-standard-4 --num-nodes 1 --enable-autoscaling --min-nodes 1 --max-nodes 4
else
  echo "error: CLUSTER_MODE must be autopilot or standard, not $CLUSTER_MODE" >&2
  exit 2
fi

if [[ $CLUSTER_MODE == standard ]]; then
  step "GPU node pool ($GPU_TYPE on $GPU_MACHINE_TYPE, scales from zero)"
  if exists gcloud container node-pools describe gpu --cluster "$CLUSTER" --region "$REGION" --project "$PROJECT_ID"; then
    echo "node pool gpu exists"
  else
    run gcloud container node-pools create gpu --cluster "$CLUSTER" --region "$REGION" --project "$PROJECT_ID" \
      --machine-type "$GPU_MACHINE_TYPE" --accelerator "type=${GPU_TYPE},count=1,gpu-driver-version=default" \
      --workload-metadata GKE_METADATA --num-nodes 0 --enable-autoscaling --min-nodes 0 --max-nodes 2
  fi
fi

step "kubectl credentials"
run gcloud container clusters get-credentials "$CLUSTER" --region "$REGION" --project "$PROJECT_ID"
