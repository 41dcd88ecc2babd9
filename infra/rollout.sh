#!/usr/bin/env bash
# Canary rollouts through Knative traffic splitting. The stable revision follows LATEST;
# a candidate revision serves exactly one model version (MODEL_VERSION), under the tag
# "candidate" and with a share of the traffic. Safe to rerun: each command renders the
# whole Service (infra/ksvc.py) and applies it, so a repeat changes nothing.
#
#   canary VERSION --percent P   start (or re-weigh) a candidate; prints its tag URL
#   status [--window 10m]        the traffic split, and per model_version the request
#                                rate, 5xx rate, mean confidence and correction rate
#                                (from PROMETHEUS_URL if set, else the PromQL to run)
#   promote [--reason TEXT]      move LATEST to the candidate's version (registry CLI),
#                                then all traffic to the stable revision, no candidate
#   abort                        all traffic to the stable revision, no candidate
#
# usage: infra/rollout.sh [--dry-run] [--overlay gke|gpu] canary VERSION --percent P | status | promote | abort
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
parse_args "$@"
set -- "${SCRIPT_ARGS[@]}"
command="${1:-}"
shift || true
if [[ $OVERLAY == gke-pvc ]]; then
  echo "error: rollout.sh moves LATEST from this machine, in the gs:// model store; overlay gke-pvc keeps" \
    "the models on the cluster's PVC (run the registry CLI in a pod that mounts it)" >&2
  exit 2
fi
need kubectl

STORE="gs://$BUCKET"
KSVC_ARGS=(--namespace "$NAMESPACE")
# The rendered overlay, through infra/ksvc.py with these arguments.
render() {
  echo "kubectl kustomize $(quoted "$INFRA_DIR/overlays/$OVERLAY") | $(quoted "$VENV_PYTHON" "$INFRA_DIR/ksvc.py" "$@")"
}

# The candidate in the live Service: CANDIDATE (its revision) and CANDIDATE_VERSION.
read_candidate() {
  query kubectl get ksvc "$KSVC" "${KSVC_ARGS[@]}" -o jsonpath='{.spec.traffic[?(@.tag=="candidate")].revisionName}'
  CANDIDATE="$REPLY"
  CANDIDATE_VERSION=""
  [[ -n $CANDIDATE || $DRY_RUN == 1 ]] || return 0
  query kubectl get revision "${CANDIDATE:-<candidate revision>}" "${KSVC_ARGS[@]}" \
    -o jsonpath='{.spec.containers[0].env[?(@.name=="MODEL_VERSION")].value}'
  CANDIDATE_VERSION="$REPLY"
}

to_stable() {
  need_venv
  step "all traffic to the stable revision (follows LATEST), no candidate"
  run_sh "$(render pinned) | kubectl apply -f -"
  wait_ksvc
}

case "$command" in
  canary)
    version="" percent=""
    while (($#)); do
      case "$1" in
        --percent) percent="${2:-}"; shift ;;
        --percent=*) percent="${1#--percent=}" ;;
        -*) echo "error: unknown option $1" >&2; exit 2 ;;
        *) [[ -z $version ]] || { echo "error: canary takes one model version, got $version and $1" >&2; exit 2; }
          version="$1" ;;
      esac
      shift || true
    done
    if [[ -z $version || ! $percent =~ ^[0-9]+$ ]] || ((percent > 100)); then
      echo "error: canary needs a model version and --percent, a whole number from 0 to 100" \
        "(infra/rollout.sh canary 20261202T000028Z-a6785ae6 --percent 10)" >&2
      exit 2
    fi

    need_venv
    step "stable revision: this checkout's must be serving (infra/deploy-service.sh deploys it)"
    query_sh "$(render stable-name)"
    stable="$REPLY"
    query kubectl get ksvc "$KSVC" "${KSVC_ARGS[@]}" -o jsonpath='{.status.traffic[*].revisionName}'
    if [[ $DRY_RUN == 0 && " $REPLY " != *" $stable "* ]]; then
      echo "error: this checkout's stable revision $stable is not serving (the Service routes to: ${REPLY:-nothing});" \
        "the manifests changed since the last deploy: run infra/deploy-service.sh first" >&2
      exit 1
    fi

    step "candidate: model $version pinned, tag candidate, $percent% of the traffic"
    run_sh "$(render canary "$version" "$percent") | kubectl apply -f -"
    wait_ksvc

    step "try the candidate directly (http://candidate-$KSVC.$NAMESPACE.<domain>)"
    run kubectl get ksvc "$KSVC" "${KSVC_ARGS[@]}" -o jsonpath='{.status.traffic[?(@.tag=="candidate")].url}{"\n"}'
    echo "compare: infra/rollout.sh status; then infra/rollout.sh promote or abort"
    ;;

  status)
    window=10m
    while (($#)); do
      case "$1" in
        --window) window="${2:?--window needs a Prometheus duration, e.g. 10m}"; shift ;;
        *) echo "error: unknown option $1" >&2; exit 2 ;;
      esac
      shift
    done
    step "traffic split of ksvc $KSVC (percent, revision, tag, URL)"
    run kubectl get ksvc "$KSVC" "${KSVC_ARGS[@]}" \
      -o jsonpath='{range .status.traffic[*]}{.percent}%{"\t"}{.revisionName}{"\t"}{.tag}{"\t"}{.url}{"\n"}{end}'
    step "revisions and the model version each is pinned to (none: follows LATEST)"
    run kubectl get revisions "${KSVC_ARGS[@]}" -l "serving.knative.dev/service=$KSVC" \
      -o 'custom-columns=REVISION:.metadata.name,MODEL_VERSION:.spec.containers[0].env[?(@.name=="MODEL_VERSION")].value,READY:.status.conditions[?(@.type=="Ready")].status,CREATED:.metadata.creationTimestamp'

    # What people see: every route but the probes and /metrics.
    routes='route!~"/(healthz|readyz|metrics)"'
    names=("requests per second" "5xx share of requests" "mean top-class confidence" "corrections per prediction")
    queries=(
      "sum by (model_version) (rate(digitdraw_requests_total{$routes}[$window]))"
      "sum by (model_version) (rate(digitdraw_requests_total{$routes,status=~\"5..\"}[$window])) / sum by (model_version) (rate(digitdraw_requests_total{$routes}[$window]))"
      "sum by (model_version) (rate(digitdraw_prediction_confidence_sum[$window])) / sum by (model_version) (rate(digitdraw_prediction_confidence_count[$window]))"
      "sum by (model_version) (rate(digitdraw_corrections_total[$window])) / sum by (model_version) (rate(digitdraw_predictions_total[$window]))"
    )
    step "per model_version over the last $window (PromQL)"
    for i in "${!queries[@]}"; do
      echo "# ${names[$i]}: ${queries[$i]}"
      if [[ -n ${PROMETHEUS_URL:-} ]]; then
        need_venv
        run "$VENV_PYTHON" "$INFRA_DIR/promql.py" "$PROMETHEUS_URL" "${queries[$i]}"
      fi
    done
    if [[ -z ${PROMETHEUS_URL:-} ]]; then
      echo "PROMETHEUS_URL is not set: paste the queries into Cloud Monitoring's PromQL editor, or port-forward"
      echo "Google Managed Prometheus's frontend and rerun with PROMETHEUS_URL=http://localhost:9090"
    fi
    ;;

  promote)
    reason=""
    while (($#)); do
      case "$1" in
        --reason) reason="${2:?--reason needs a text}"; shift ;;
        *) echo "error: unknown option $1" >&2; exit 2 ;;
      esac
      shift
    done
    step "the candidate in ksvc $KSVC"
    need_venv
    read_candidate
    if [[ $DRY_RUN == 0 && -z $CANDIDATE ]]; then
      echo "no candidate revision takes traffic: nothing to promote"
      exit 0
    fi
    if [[ $DRY_RUN == 0 && -z $CANDIDATE_VERSION ]]; then
      echo "error: candidate revision $CANDIDATE is pinned to no MODEL_VERSION; end it with infra/rollout.sh abort" >&2
      exit 1
    fi
    version="${CANDIDATE_VERSION:-<candidate MODEL_VERSION>}"
    step "LATEST in $STORE to $version (the registry CLI verifies it first)"
    # The registry CLI's exit code passes through: 3 no such version, 4 store unreachable,
    # 5 LATEST moved meanwhile, 6 the model does not verify. The traffic stays as it is.
    reason="${reason:-canary ${CANDIDATE:-<candidate revision>} promoted with infra/rollout.sh}"
    run_sh "cd $(quoted "$ROOT") && $(quoted "$VENV_PYTHON" -m training.registry --store "$STORE" promote "$version" --reason "$reason")"
    # The stable revision's pods load it within MODEL_POLL_SECONDS; new pods load it at once.
    to_stable
    ;;

  abort)
    [[ $# == 0 ]] || { echo "error: abort takes no arguments" >&2; exit 2; }
    to_stable
    ;;

  *)
    echo "error: give a command: canary VERSION --percent P, status, promote or abort (see --help)" >&2
    exit 2
    ;;
esac
