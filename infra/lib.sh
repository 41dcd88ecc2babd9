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

# Names the manifests use too (ray/base, ray/cron, knative/base).
TRAINER_GSA="digitdraw-trainer@${PROJECT_ID}.iam.gserviceaccount.com"
SERVER_GSA="digitdraw-server@${PROJECT_ID}.iam.gserviceaccount.com"
REVIEW_GSA="digitdraw-review@${PROJECT_ID}.iam.gserviceaccount.com"
TRAINER_KSA=digitdraw-trainer
SERVER_KSA=digitdraw-server
REVIEW_KSA=digitdraw-review
REVIEW=digitdraw-review  # the review page's Deployment, Service, BackendConfig, Ingress and address
RAYJOB=digitdraw-train  # the template: each run is a copy under a fresh name
RAYCRONJOB=digitdraw-retrain-nightly
KSVC=digitdraw
REGISTRY="${REGION}-docker.pkg.dev/${PROJECT_ID}/${AR_REPO}"
OVERLAY=gke
# The Python of the project's virtual environment (make setup), where infra/ksvc.py and
# the registry CLI run.
VENV_PYTHON="${VENV_PYTHON:-$ROOT/.venv/bin/python}"

DRY_RUN=0

# The script's header comment, from its second line to the first line of code.
usage() {
  sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"
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

# Print a command that only reads and, unless --dry-run, run it: its output goes to REPLY
# (empty in a dry run).
query() {
  echo "+ $(quoted "$@")"
  REPLY=""
  if [[ $DRY_RUN == 0 ]]; then
    REPLY="$("$@")"
  fi
}

# The same for a pipeline, given as one string.
query_sh() {
  echo "+ $1"
  REPLY=""
  if [[ $DRY_RUN == 0 ]]; then
    REPLY="$(bash -euo pipefail -c "$1")"
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

need_venv() {
  if [[ $DRY_RUN == 0 && ! -x $VENV_PYTHON ]]; then
    echo "error: $VENV_PYTHON not found: $(basename "$0") runs infra/ksvc.py and the registry CLI in the project's" \
      "virtual environment; create it with make setup, or set VENV_PYTHON to its python" >&2
    exit 1
  fi
}

# kubectl kustomize for the chosen overlay, applied to the objects matching a label selector.
apply_overlay() {
  run_sh "kubectl kustomize $(quoted "$ROOT/infra/overlays/$OVERLAY") | kubectl apply -l '$1' -f -"
}

# Wait until the Knative Service has acted on its newest spec and is Ready (a plain wait
# right after an apply can still see the Ready of the spec before).
wait_ksvc() {
  local ksvc="ksvc $KSVC --namespace $NAMESPACE"
  run_sh "kubectl wait $ksvc --timeout 60s --for=jsonpath='{.status.observedGeneration}'=\"\$(kubectl get $ksvc -o jsonpath='{.metadata.generation}')\" && kubectl wait $ksvc --for condition=Ready --timeout 300s"
}

# kustomize takes relative paths only: absolute path $1 as seen from directory $2.
relative_to() {
  local up="" dir="$2"
  while [[ $dir != / ]]; do
    up+="../"
    dir="$(dirname "$dir")"
  done
  echo "${up}${1#/}"
}

# The name of a RayJob still running in the namespace (any: train.sh's, retrain.sh's or a
# nightly one), or nothing. Two trainings at once would only compete for nodes.
unfinished_rayjob() {
  kubectl get rayjob --namespace "$NAMESPACE" \
    -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.status.jobDeploymentStatus}{"\n"}{end}' |
    awk '$2 !~ /^(Complete|Failed|ValidationFailed|Suspended)$/ {print $1; exit}'
}

# Apply the overlay's training objects with its template RayJob as a new RayJob named $1
# (the run is named after it). With "retrain", the new RayJob runs the nightly job
# template (ray/cron: feedback, warm start) instead. kustomize renames and copies.
create_rayjob() {
  local name="$1" template="${2:-}" dir
  if [[ $template == retrain ]]; then
    step "RayJob $name from the nightly job template of $RAYCRONJOB, and the training objects of overlay $OVERLAY"
  else
    step "RayJob $name from the template RayJob $RAYJOB, and the training objects of overlay $OVERLAY"
  fi
  dir="$(mktemp -d)"
  # shellcheck disable=SC2064 # the directory is known now, and $dir is local
  trap "rm -rf '$dir'" EXIT
  {
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "resources: [$(relative_to "$INFRA_DIR/overlays/$OVERLAY" "$dir")]"
    echo "patches:"
    echo "  - target: {kind: RayJob, name: $RAYJOB}"
    echo "    patch: '[{\"op\": \"replace\", \"path\": \"/metadata/name\", \"value\": \"$name\"}]'"
    if [[ $template == retrain ]]; then
      echo "replacements:"
      echo "  - source: {kind: RayCronJob, name: $RAYCRONJOB, fieldPath: spec.jobTemplate}"
      echo "    targets: [{select: {kind: RayJob, name: $name}, fieldPaths: [spec]}]"
    fi
  } >"$dir/kustomization.yaml"
  echo "# $dir/kustomization.yaml:"
  sed 's/^/#   /' "$dir/kustomization.yaml"
  run_sh "kubectl kustomize $(quoted "$dir") | kubectl apply -l 'app.kubernetes.io/component notin (serving,review)' -f -"
}

# The RayJob to follow, in REPLY: one still running in the namespace, or else a new one
# that create_rayjob "$@" makes.
running_or_new_rayjob() {
  local running=""
  step "RayJobs still running in $NAMESPACE"
  echo "+ kubectl get rayjob --namespace $NAMESPACE  # any not Complete or Failed"
  if exists kubectl get namespace "$NAMESPACE"; then
    running="$(unfinished_rayjob)"
  fi
  if [[ -n $running ]]; then
    echo "RayJob $running is still running; waiting for it instead of starting another"
    REPLY="$running"
  else
    create_rayjob "$@"
    REPLY="$1"
  fi
}

# Follow RayJob $1 to its end (activeDeadlineSeconds bounds it), then print its driver's log.
follow_rayjob() {
  local name="$1" state
  step "waiting for RayJob $name"
  echo "+ kubectl get rayjob $name --namespace $NAMESPACE -o jsonpath='{.status.jobDeploymentStatus}'  # every 30 s"
  if [[ $DRY_RUN == 0 ]]; then
    while true; do
      state="$(kubectl get rayjob "$name" --namespace "$NAMESPACE" -o jsonpath='{.status.jobDeploymentStatus}' || true)"
      echo "$(date +%H:%M:%S) RayJob $name: ${state:-Pending}"
      case "$state" in
        Complete) break ;;
        Failed | ValidationFailed)
          kubectl describe rayjob "$name" --namespace "$NAMESPACE" | tail -20 >&2
          echo "error: RayJob $name failed; its log: kubectl logs -l job-name=$name -n $NAMESPACE" >&2
          exit 1 ;;
      esac
      sleep 30
    done
  fi
  run kubectl logs --namespace "$NAMESPACE" -l "job-name=$name" --tail 40
}
