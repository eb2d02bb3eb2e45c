{{/*
Names. Everything is named after the release so two releases in one namespace never collide.
Truncated to 40 characters: LWS derives StatefulSet, pod and revision-hash label names from the
LeaderWorkerSet name, and those must stay within 63 characters.
*/}}
{{- define "triton-lws.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{- define "triton-lws.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "triton-lws.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "triton-lws.sshSecretName" -}}
{{- printf "%s-ssh" (include "triton-lws.fullname" .) }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "triton-lws.labels" -}}
helm.sh/chart: {{ include "triton-lws.chart" . }}
{{ include "triton-lws.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: megapod
{{- end }}

{{/* The labels that identify this release's objects (stable across upgrades: used in selectors). */}}
{{- define "triton-lws.selectorLabels" -}}
app.kubernetes.io/name: {{ include "triton-lws.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* This release's leader pods: what the Service, the PodMonitor and nothing else select. */}}
{{- define "triton-lws.leaderSelectorLabels" -}}
{{ include "triton-lws.selectorLabels" . }}
app.kubernetes.io/component: leader
{{- end }}

{{/*
The recorded series the autoscaler follows, and its name in the custom metrics API
(prometheus-adapter `as`: no colons there).
*/}}
{{- define "triton-lws.scalingSeries" -}}
{{- index .Values.monitoring.series .Values.autoscaling.metric }}
{{- end }}

{{- define "triton-lws.adapterName" -}}
{{- replace ":" "_" . }}
{{- end }}

{{/* PromQL label matchers for this release's leader series (labels added by the PodMonitor). */}}
{{- define "triton-lws.seriesSelector" -}}
namespace="{{ .Release.Namespace }}", lws="{{ include "triton-lws.fullname" . }}"
{{- end }}

{{/*
An OpenSSH public key line from a PEM "EC PRIVATE KEY" (P-256, what genPrivateKey "ecdsa"
makes). SEC1 DER ends with the public point (0x04 || X || Y, 65 bytes); the OpenSSH wire
format is string("ecdsa-sha2-nistp256") string("nistp256") string(point), each prefixed with
its 4-byte length. tests/test_chart.py checks the result against `ssh-keygen -y`.
*/}}
{{- define "triton-lws.sshPublicKey" -}}
{{- $der := regexReplaceAll "-----[A-Z ]+-----|\\s" . "" | b64dec }}
{{- $point := substr (int (sub (len $der) 65)) (len $der) $der }}
{{- $blob := printf "%s%s%s%s%s%s" "\x00\x00\x00\x13" "ecdsa-sha2-nistp256" "\x00\x00\x00\x08" "nistp256" "\x00\x00\x00\x41" $point }}
{{- printf "ecdsa-sha2-nistp256 %s" (b64enc $blob) }}
{{- end }}

{{/* Validation that the schema cannot express (relations between values): fail with one line. */}}
{{- define "triton-lws.validate" -}}
{{- $g := .Values.group }}
{{- if lt (int $g.size) 1 }}
{{- fail (printf "group.size (%v) must be >= 1: it is the LeaderWorkerSet size, pods per model instance (leader included)" $g.size) }}
{{- end }}
{{- if and (lt (int $g.gpusPerPod) 1) (ne .Values.backend "cpu-python") }}
{{- fail (printf "group.gpusPerPod (%v) must be >= 1 for backend %s (only cpu-python runs without GPUs)" $g.gpusPerPod .Values.backend) }}
{{- end }}
{{- if ne (int $g.worldSize) (mul $g.size $g.gpusPerPod | int) }}
{{- fail (printf "group.worldSize (%v) must equal group.size (%v) x group.gpusPerPod (%v): derive them from one spec with `megapod render`" $g.worldSize $g.size $g.gpusPerPod) }}
{{- end }}
{{- if gt (int .Values.replicas.min) (int .Values.replicas.max) }}
{{- fail (printf "replicas.min (%v) must be <= replicas.max (%v)" .Values.replicas.min .Values.replicas.max) }}
{{- end }}
{{- $mount := trimSuffix "/" .Values.model.mountPath }}
{{- if not (hasPrefix (printf "%s/" $mount) .Values.model.repository) }}
{{- fail (printf "model.repository (%s) must be inside model.mountPath (%s), the only volume the pods see" .Values.model.repository .Values.model.mountPath) }}
{{- end }}
{{- if and (eq (int .Values.rollout.maxSurge) 0) (eq (int .Values.rollout.maxUnavailable) 0) }}
{{- fail "rollout.maxSurge and rollout.maxUnavailable cannot both be 0: the LWS webhook refuses it (no rollout could start)" }}
{{- end }}
{{- $p := .Values.ports }}
{{- if ne (len (uniq (list $p.http $p.grpc $p.metrics $p.ssh))) 4 }}
{{- fail (printf "ports must be distinct (http %v, grpc %v, metrics %v, ssh %v)" $p.http $p.grpc $p.metrics $p.ssh) }}
{{- end }}
{{- end }}
