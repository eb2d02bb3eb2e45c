// Modules read only for the YAML they ship (never built): the monitoring.coreos.com CRDs
// (PodMonitor, PrometheusRule) the chart renders, from example/prometheus-operator-crd/.
module megapod.local/cluster/manifests

go 1.24.0

require github.com/prometheus-operator/prometheus-operator v0.85.0 // indirect
