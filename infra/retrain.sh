#!/usr/bin/env bash
# Retrain now: tonight's job at once. Creates a RayJob named digitdraw-retrain-<UTC
# time> from the nightly job template (ray/cron): the template RayJob, plus the
# corrections people sent (FEEDBACK_URI) and a warm start from the model LATEST names
# (INIT_FROM=latest); like the nightly job it trains on approved corrections only
# (docs/operating.md: reviewing). Then follows it to the end; the model it publishes
# moves LATEST only if it passes the promotion gate. Safe to rerun: while any training RayJob
# (a nightly one too) is still running, it waits for that one instead.
#
# usage: infra/retrain.sh [--dry-run] [--overlay gke|gpu|gke-pvc] [--no-wait]
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
parse_args "$@"
need kubectl
wait=1
for arg in "${SCRIPT_ARGS[@]}"; do
  case "$arg" in
    --no-wait) wait=0 ;;
    *) echo "error: unknown option $arg" >&2; exit 2 ;;
  esac
done

running_or_new_rayjob "digitdraw-retrain-$(date -u +%Y%m%d-%H%M%S)" retrain
name="$REPLY"
if [[ $wait == 1 ]]; then
  follow_rayjob "$name"
else
  echo
  echo "follow it: kubectl get rayjob $name --namespace $NAMESPACE -w"
  echo "its log:   kubectl logs -f -l job-name=$name --namespace $NAMESPACE"
fi
