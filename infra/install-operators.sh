#!/usr/bin/env bash
# Install the KubeRay operator (Helm) with its RayCronJob feature gate on (nightly
# retraining, ray/cron), and Knative Serving with Kourier and the sslip.io default
# domain (release manifests), at pinned versions, and turn on the Knative feature
# flags the gke-pvc overlay needs. Safe to rerun.
#
# usage: infra/install-operators.sh [--dry-run]
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
parse_args "$@"
need kubectl helm

step "KubeRay operator $KUBERAY_VERSION, feature gate RayCronJob on"
run helm repo add kuberay "$KUBERAY_HELM_REPO" --force-update
# RayCronJob is alpha and off by default in 1.7. --set replaces the chart's whole
# featureGates list, which leaves the others at the operator's own defaults: the
# chart lists the beta gates as on, and they are on by default anyway.
run helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
  --namespace kuberay-system --create-namespace --wait \
  --set 'featureGates[0].name=RayCronJob' --set 'featureGates[0].enabled=true'

step "Knative Serving $KNATIVE_VERSION"
run kubectl apply -f "$KNATIVE_SERVING_URL/serving-crds.yaml"
run kubectl wait --for condition=Established --timeout 120s crd/services.serving.knative.dev
run kubectl apply -f "$KNATIVE_SERVING_URL/serving-core.yaml"

step "Kourier networking $KNATIVE_VERSION"
run kubectl apply -f "$KOURIER_URL/kourier.yaml"
run kubectl patch configmap/config-network --namespace knative-serving --type merge \
  --patch '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
run kubectl wait --for condition=Available --timeout 300s --namespace knative-serving deployment --all
# Kourier's load balancer keeps the client's address (externalTrafficPolicy Local), so the
# address Envoy appends to X-Forwarded-For is the client's: the feedback rate limit counts by it.
run kubectl patch service/kourier --namespace kourier-system --type merge \
  --patch '{"spec":{"externalTrafficPolicy":"Local"}}'

step "default domain (sslip.io on Kourier's load balancer IP)"
run kubectl apply -f "$KNATIVE_SERVING_URL/serving-default-domain.yaml"

step "Knative feature flags (infra/knative-features.yaml)"
run kubectl patch configmap/config-features --namespace knative-serving --type merge \
  --patch-file "$INFRA_DIR/knative-features.yaml"
