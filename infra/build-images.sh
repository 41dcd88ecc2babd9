#!/usr/bin/env bash
# Build the training, serving and review page images with Cloud Build and push them to Artifact
# Registry (no local Docker needed). --gpu also builds the CUDA training image
# for the gpu overlay. Safe to rerun: an existing tag is rebuilt and pushed again.
#
# usage: infra/build-images.sh [--dry-run] [--gpu]
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
parse_args "$@"
need gcloud
with_gpu=0
for arg in "${SCRIPT_ARGS[@]}"; do
  case "$arg" in
    --gpu) with_gpu=1 ;;
    *) echo "error: unknown option $arg" >&2; exit 2 ;;
  esac
done

step "Artifact Registry repository $AR_REPO in $REGION"
if exists gcloud artifacts repositories describe "$AR_REPO" --location "$REGION" --project "$PROJECT_ID"; then
  echo "repository $AR_REPO exists"
else
  run gcloud artifacts repositories create "$AR_REPO" --repository-format docker --location "$REGION" \
    --project "$PROJECT_ID"
fi

step "Cloud Build: $REGISTRY/{digitdraw-training,digitdraw-service,digitdraw-review}:$IMAGE_TAG"
run gcloud builds submit "$ROOT" --project "$PROJECT_ID" --region "$REGION" --config "$INFRA_DIR/cloudbuild.yaml" \
  --substitutions "_REGISTRY=$REGISTRY,_IMAGE_TAG=$IMAGE_TAG,_WITH_GPU=$with_gpu"
