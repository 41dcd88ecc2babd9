#!/usr/bin/env bash
# From an empty GCP project to a URL: every infra/ step in order. Settings come from
# infra/config/config.env. Safe to rerun; a step that is done is skipped.
#
# usage: infra/up.sh [--dry-run] [--overlay gke|gpu|gke-pvc]
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
parse_args "$@"
args=(--overlay "$OVERLAY")
if [[ $DRY_RUN == 1 ]]; then
  args+=(--dry-run)
fi
gpu=()
if [[ $OVERLAY == gpu ]]; then
  gpu=(--gpu)
fi

"$INFRA_DIR/create-cluster.sh" "${args[@]}"
"$INFRA_DIR/setup-storage.sh" "${args[@]}"
"$INFRA_DIR/install-operators.sh" "${args[@]}"
"$INFRA_DIR/build-images.sh" "${args[@]}" "${gpu[@]}"
"$INFRA_DIR/train.sh" "${args[@]}"
"$INFRA_DIR/deploy-service.sh" "${args[@]}"
# The review page, inside the cluster only: infra/deploy-review.sh --expose puts it behind IAP.
"$INFRA_DIR/deploy-review.sh" "${args[@]}"
