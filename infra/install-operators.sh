#!/usr/bin/env bash
# Install the KubeRay operator (Helm) and Knative Serving with Kourier and the
# sslip.io default domain (release manifests), at pinned versions, and turn on the
# Knative feature flags the gke-pvc overlay needs. Safe to rerun.
#
# usage: infra/install-operators.sh [--dry-run]
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
parse_args "$@"
need kubectl helm

step "KubeRay operator $KUBERAY_VERSION"
run helm repo add kuberay "$KUBERAY_HELM_REPO" --force-update
run helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
  --namespace kuberay-system --create-namespace --wait

step "Knative Serving $KNATIVE_VERSION"
run kubectl apply -f "$KNATIVE_SERVING_URL/serving-crds.yaml"
run kubectl wait --for condition=Established --timeout 120s crd/services.serving.knative.dev
run kubectl apply -f "$KNATIVE_SERVING_URL/serving-core.yaml"

step "Kourier networking $KNATIVE_VERSION"
run kubectl apply -f "$KOURIER_URL/kourier.yaml"
run kubectl patch configmap/config-network --namespace knative-serving --type merge \
  --patch '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
run kubectl wait --for condition=Available --timeout 300s --namespace knative-serving deployment --all

step "default domain (sslip.io on Kourier's load balancer IP)"
run kubectl apply -f "$KNATIVE_SERVING_URL/serving-default-domain.yaml"

step "Knative feature flags (infra/knative-features.yaml)"
run kubectl patch configmap/config-features --namespace knative-serving --type merge \
  --patch-file "$INFRA_DIR/knative-features.yaml"
