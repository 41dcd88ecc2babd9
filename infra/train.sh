#!/usr/bin/env bash
# Train from scratch and wait for it: creates the namespace, the shared PVC, the
# trainer's KSA, the Ray settings and the nightly retraining schedule (ray/cron), then
# a RayJob from the template under a fresh name, digitdraw-train-<UTC time>, and
# follows it to the end. The run is named after the RayJob, so each one trains anew
# while its own retries resume it. Safe to rerun: while a training RayJob is still
# running, it waits for that one instead of starting another.
#
# usage: infra/train.sh [--dry-run] [--overlay gke|gpu|gke-pvc]
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
parse_args "$@"
need kubectl

running_or_new_rayjob "$RAYJOB-$(date -u +%Y%m%d-%H%M%S)"
follow_rayjob "$REPLY"
