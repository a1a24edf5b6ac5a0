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

{{/* The MQTT Service; the split bridge connects to the broker through it, the Ingress forwards to its port ws. */}}
{{- define "chatmq.mqttService" -}}
{{- include "chatmq.fullname" . }}
{{- end }}

{{/*
The cluster's headless Services. The brokers' one is how the bridges find
every broker: its name resolves to one address per ready broker pod. The
bridges' one only governs their StatefulSet (stable pod names, so each
bridge's ordinal comes from its hostname).
*/}}
{{- define "chatmq.brokerHeadless" -}}
{{- printf "%s-broker-headless" (include "chatmq.fullname" .) }}
{{- end }}

{{- define "chatmq.bridgeHeadless" -}}
{{- printf "%s-bridge-headless" (include "chatmq.fullname" .) }}
{{- end }}

{{- define "chatmq.split" -}}
{{- if eq .Values.mode "split" }}true{{ end }}
{{- end }}

{{- define "chatmq.cluster" -}}
{{- if eq .Values.mode "cluster" }}true{{ end }}
{{- end }}

{{/* Broker and bridge run as separate processes (split or cluster): the
bridge logs in to the broker with the bridge.username service account. */}}
{{- define "chatmq.apart" -}}
{{- if or (include "chatmq.split" .) (include "chatmq.cluster" .) }}true{{ end }}
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
{{- if and (include "chatmq.apart" .) (not .Values.auth.existingSecret) (not .Values.bridge.password) }}
{{- fail (printf "mode %s: set bridge.password (the bridge's login to the broker, e.g. --set bridge.password=$(openssl rand -hex 16)) or auth.existingSecret" .Values.mode) }}
{{- end }}
{{- if include "chatmq.cluster" . }}
{{- /* the embedded store lives on one pod's disk: N brokers and M bridges cannot share it */}}
{{- if not (include "chatmq.scylla" .) }}
{{- fail (printf "mode cluster: set store.backend=scylla (it is %q; the embedded store cannot be shared by several brokers and bridges)" .Values.store.backend) }}
{{- end }}
{{- $c := .Values.cluster }}
{{- if gt ($c.bridgeReplicas | int) ($c.partitions | int) }}
{{- fail (printf "mode cluster: cluster.bridgeReplicas (%d) must not exceed cluster.partitions (%d): each bridge owns at least one partition; raise cluster.partitions (fixed for the cluster's life) or lower cluster.bridgeReplicas" ($c.bridgeReplicas | int) ($c.partitions | int)) }}
{{- end }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled: set tls.secretName to a kubernetes.io/tls Secret" }}
{{- end }}
{{- if and (include "chatmq.scylla" .) .Values.store.scylla.tls.enabled (not .Values.store.scylla.tls.caSecret) }}
{{- fail "store.scylla.tls.enabled: set store.scylla.tls.caSecret" }}
{{- end }}
{{- if .Values.ingress.enabled }}
{{- if not .Values.websocket.enabled }}
{{- fail "ingress.enabled: set websocket.enabled=true (the Ingress routes <host>/mqtt to the MQTT Service's ws port, which websocket.enabled=false removes) or ingress.enabled=false" }}
{{- end }}
{{- if not .Values.ingress.hosts }}
{{- fail "ingress.enabled: set ingress.hosts (at least one {host: chat.example.com}; the Ingress routes <host>/mqtt to the ws port)" }}
{{- end }}
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
The workloads: one Deployment (all), two (broker, bridge), or in cluster
mode a broker Deployment of cluster.brokerReplicas and a bridge StatefulSet
of cluster.bridgeReplicas. Each: name suffix, kind, mode, whether it serves
MQTT, resources, whether it opens the store (and mounts its PVC or CA),
whether it reads the bridges' cluster.toml.
*/}}
{{- define "chatmq.workloads" -}}
{{- if include "chatmq.cluster" . }}
{{- /* a cluster's broker loads room members from ScyllaDB: store true */}}
- {suffix: "-broker", kind: Deployment, mode: broker, mqtt: true, store: true, values: broker, clusterToml: false}
- {suffix: "-bridge", kind: StatefulSet, mode: bridge, mqtt: false, store: true, values: bridge, clusterToml: true}
{{- else if include "chatmq.split" . }}
- {suffix: "-broker", kind: Deployment, mode: broker, mqtt: true, store: false, values: broker, clusterToml: false}
- {suffix: "-bridge", kind: Deployment, mode: bridge, mqtt: false, store: true, values: bridge, clusterToml: false}
{{- else }}
- {suffix: "", kind: Deployment, mode: all, mqtt: true, store: true, values: allInOne, clusterToml: false}
{{- end }}
{{- end }}

{{/* Pod selector labels of the pods that serve MQTT. */}}
{{- define "chatmq.mqttSelectorLabels" -}}
{{ include "chatmq.selectorLabels" . }}
app.kubernetes.io/component: {{ ternary "broker" "all" (eq (include "chatmq.apart" .) "true") }}
{{- end }}

{{/*
A workload's pod template (Deployment or StatefulSet).
dict: ctx (root), w (an entry of chatmq.workloads).
*/}}
{{- define "chatmq.podTemplate" -}}
{{- $root := .ctx -}}
{{- $w := .w -}}
metadata:
  labels:
    {{- include "chatmq.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $w.mode }}
    {{- include "chatmq.metricsPodLabel" $root | nindent 4 }}
    {{- with $root.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- include "chatmq.checksums" $root | nindent 4 }}
    {{- if $w.clusterToml }}
    checksum/cluster: {{ include "chatmq.clusterToml" $root | sha256sum }}
    {{- end }}
    {{- with $root.Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- $claim := ternary (include "chatmq.claimName" $root) "" $w.store }}
  {{- $resources := (index $root.Values $w.values).resources }}
  {{- include "chatmq.podSpec" (dict "ctx" $root "mode" $w.mode "config" (include "chatmq.configName" $root) "secret" (include "chatmq.secretName" $root) "resources" $resources "mqtt" $w.mqtt "store" $w.store "server" true "claim" $claim "clusterToml" $w.clusterToml) | trim | nindent 2 }}
{{- end }}
