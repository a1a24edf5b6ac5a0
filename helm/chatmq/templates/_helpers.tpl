{{/* Names and labels. */}}
{{- define "chatmq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chatmq.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "chatmq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chatmq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "chatmq.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "chatmq.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The label the metrics Service selects: pods that serve /metrics. */}}
{{- define "chatmq.metricsPodLabel" -}}
chatmq/metrics: "true"
{{- end }}

{{- define "chatmq.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "chatmq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chatmq.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "chatmq.configName" -}}
{{- printf "%s-config" (include "chatmq.fullname" .) }}
{{- end }}

{{- define "chatmq.secretName" -}}
{{- default (printf "%s-secret" (include "chatmq.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* The MQTT Service; the split bridge connects to the broker through it. */}}
{{- define "chatmq.mqttService" -}}
{{- include "chatmq.fullname" . }}
{{- end }}

{{- define "chatmq.split" -}}
{{- if eq .Values.mode "split" }}true{{ end }}
{{- end }}

{{- define "chatmq.scylla" -}}
{{- if eq .Values.store.backend "scylla" }}true{{ end }}
{{- end }}

{{/* Which listeners run (and so which ports the broker's pods and Service have). */}}
{{- define "chatmq.wss" -}}
{{- if and .Values.tls.enabled .Values.tls.websocket .Values.websocket.enabled }}true{{ end }}
{{- end }}

{{/* Refuses values that cannot work together, with the key to fix. */}}
{{- define "chatmq.validate" -}}
{{- if and (include "chatmq.split" .) (not .Values.auth.existingSecret) (not .Values.bridge.password) }}
{{- fail "mode split: set bridge.password (the bridge's login to the broker, e.g. --set bridge.password=$(openssl rand -hex 16)) or auth.existingSecret" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled: set tls.secretName to a kubernetes.io/tls Secret" }}
{{- end }}
{{- if and (include "chatmq.scylla" .) .Values.store.scylla.tls.enabled (not .Values.store.scylla.tls.caSecret) }}
{{- fail "store.scylla.tls.enabled: set store.scylla.tls.caSecret" }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (eq (toString $pdb.minAvailable) "") (eq (toString $pdb.maxUnavailable) "") }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable" }}
{{- end }}
{{- if and $pdb.enabled (ne (toString $pdb.minAvailable) "") (ne (toString $pdb.maxUnavailable) "") }}
{{- fail "podDisruptionBudget: set only one of minAvailable and maxUnavailable" }}
{{- end }}
{{- end }}

{{/* The PVC of the embedded store, or "" (emptyDir). */}}
{{- define "chatmq.claimName" -}}
{{- $p := .Values.store.persistence }}
{{- if and (not (include "chatmq.scylla" .)) $p.enabled }}
{{- default (printf "%s-data" (include "chatmq.fullname" .)) $p.existingClaim }}
{{- end }}
{{- end }}

{{/*
The Deployments: one (all) or two (broker, bridge). Each: name suffix, mode,
whether it serves MQTT, resources, whether the store (and its PVC) is here.
*/}}
{{- define "chatmq.workloads" -}}
{{- if include "chatmq.split" . }}
- {suffix: "-broker", mode: broker, mqtt: true, store: false, values: broker}
- {suffix: "-bridge", mode: bridge, mqtt: false, store: true, values: bridge}
{{- else }}
- {suffix: "", mode: all, mqtt: true, store: true, values: allInOne}
{{- end }}
{{- end }}

{{/* Pod selector labels of the pods that serve MQTT. */}}
{{- define "chatmq.mqttSelectorLabels" -}}
{{ include "chatmq.selectorLabels" . }}
app.kubernetes.io/component: {{ ternary "broker" "all" (eq .Values.mode "split") }}
{{- end }}
