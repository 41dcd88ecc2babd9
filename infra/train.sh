#!/usr/bin/env bash
# Run the training RayJob and wait for it: creates the namespace, the shared PVC and
# the trainer's KSA, then the RayJob, and follows it to the end. If the RayJob is
# still running, it waits for that one; if it finished, it starts a new one (the
# same RUN_NAME resumes from its checkpoints; change it in ray/base/rayjob.yaml for
# a fresh run).
#
# usage: infra/train.sh [--dry-run] [--overlay gke|gpu|gke-pvc]
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
parse_args "$@"
need kubectl

state() {
  kubectl get rayjob "$RAYJOB" --namespace "$NAMESPACE" -o jsonpath='{.status.jobDeploymentStatus}' 2>/dev/null
}

step "previous RayJob $RAYJOB"
if exists kubectl get rayjob "$RAYJOB" --namespace "$NAMESPACE"; then
  case "$(state)" in
    Complete | Failed) run kubectl delete rayjob "$RAYJOB" --namespace "$NAMESPACE" --wait ;;
    *) echo "RayJob $RAYJOB is $(state); waiting for it" ;;
  esac
fi

step "training objects of overlay $OVERLAY (everything but the Knative Service)"
apply_overlay 'app.kubernetes.io/component!=serving'

step "waiting for RayJob $RAYJOB (activeDeadlineSeconds bounds it)"
echo "+ kubectl get rayjob $RAYJOB --namespace $NAMESPACE -o jsonpath='{.status.jobDeploymentStatus}'  # every 30 s"
if [[ $DRY_RUN == 0 ]]; then
  while true; do
    s="$(state || true)"
    echo "$(date +%H:%M:%S) RayJob $RAYJOB: ${s:-Pending}"
    case "$s" in
      Complete) break ;;
      Failed)
        kubectl describe rayjob "$RAYJOB" --namespace "$NAMESPACE" | tail -20 >&2
        echo "error: training failed; logs: kubectl logs -l job-name=$RAYJOB -n $NAMESPACE" >&2
        exit 1 ;;
    esac
    sleep 30
  done
fi
run kubectl logs --namespace "$NAMESPACE" -l "job-name=$RAYJOB" --tail 40
