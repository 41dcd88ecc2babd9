# Shared by the infra/ scripts (sourced, not run): settings, pinned versions,
# --dry-run, and `run`, which prints each command before running it.
# shellcheck shell=bash
# The settings below are used by the scripts that source this file.
# shellcheck disable=SC2034

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$INFRA_DIR")"
CONFIG="$INFRA_DIR/config/config.env"

# The one file a user edits; kustomize reads the same file.
# shellcheck source=SCRIPTDIR/config/config.env
source "$CONFIG"

# Pinned versions. KubeRay's operator must match the CRD schemas the tests use
# (v1.7.0); Knative Serving and Kourier release together.
KUBERAY_VERSION=1.7.0
KUBERAY_HELM_REPO=https://ray-project.github.io/kuberay-helm/
KNATIVE_VERSION=1.23.0
KNATIVE_SERVING_URL=https://github.com/knative/serving/releases/download/knative-v${KNATIVE_VERSION}
KOURIER_URL=https://github.com/knative/net-kourier/releases/download/knative-v${KNATIVE_VERSION}

# Names the manifests use too (ray/base, knative/base).
TRAINER_GSA="digitdraw-trainer@${PROJECT_ID}.iam.gserviceaccount.com"
SERVER_GSA="digitdraw-server@${PROJECT_ID}.iam.gserviceaccount.com"
TRAINER_KSA=digitdraw-trainer
SERVER_KSA=digitdraw-server
RAYJOB=digitdraw-train
KSVC=digitdraw
REGISTRY="${REGION}-docker.pkg.dev/${PROJECT_ID}/${AR_REPO}"
OVERLAY=gke

DRY_RUN=0

usage() {
  sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
  exit "${1:-0}"
}

# Parse the options every script takes; SCRIPT_ARGS keeps the rest.
parse_args() {
  SCRIPT_ARGS=()
  while (($#)); do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      --overlay) OVERLAY="${2:?--overlay needs a name: gke, gpu or gke-pvc}"; shift ;;
      --overlay=*) OVERLAY="${1#--overlay=}" ;;
      -h | --help) usage 0 ;;
      *) SCRIPT_ARGS+=("$1") ;;
    esac
    shift
  done
  if [[ ! -f "$INFRA_DIR/overlays/$OVERLAY/kustomization.yaml" ]]; then
    echo "error: no overlay infra/overlays/$OVERLAY (choose gke, gpu or gke-pvc)" >&2
    exit 2
  fi
  if [[ $DRY_RUN == 1 ]]; then
    echo "# dry run: printing the commands, running none of them"
  fi
}

# A command as one line that can be pasted into a shell: words quoted only where needed.
quoted() {
  local word out=()
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./:=,@+%-]+$ ]]; then out+=("$word"); else out+=("${word@Q}"); fi
  done
  echo "${out[*]}"
}

# Print a command exactly, then run it unless --dry-run.
run() {
  echo "+ $(quoted "$@")"
  if [[ $DRY_RUN == 0 ]]; then
    "$@"
  fi
}

# The same for a pipeline, given as one string.
run_sh() {
  echo "+ $1"
  if [[ $DRY_RUN == 0 ]]; then
    bash -euo pipefail -c "$1"
  fi
}

# True if the probe command succeeds. In a dry run nothing is probed, so every
# step prints the command that would create its resource.
exists() {
  [[ $DRY_RUN == 0 ]] && "$@" >/dev/null 2>&1
}

step() {
  echo
  echo "== $*"
}

need() {
  if [[ $DRY_RUN == 0 ]]; then
    local tool
    for tool in "$@"; do
      command -v "$tool" >/dev/null || { echo "error: $tool is not installed (needed by $(basename "$0"))" >&2; exit 1; }
    done
  fi
}

# kubectl kustomize for the chosen overlay, applied to the objects matching a label selector.
apply_overlay() {
  run_sh "kubectl kustomize $(quoted "$ROOT/infra/overlays/$OVERLAY") | kubectl apply -l '$1' -f -"
}
