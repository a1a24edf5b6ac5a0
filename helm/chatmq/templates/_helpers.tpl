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

{{/* TOML scalars. Strings go through toJson: a JSON string is a valid TOML
basic string. Numbers arrive as float64 from the values. */}}
{{- define "chatmq.tomlFloat" -}}
{{- $s := printf "%v" (float64 .) }}
{{- if regexMatch "^-?[0-9]+$" $s }}{{ $s }}.0{{ else }}{{ $s }}{{ end }}
{{- end }}

{{/* A table of integers (limits, router), keys as given. */}}
{{- define "chatmq.tomlInts" -}}
{{- range $k, $v := . }}
{{ $k }} = {{ $v | int64 }}
{{- end }}
{{- end }}

{{/* chatmq.toml: everything but secrets. */}}
{{- define "chatmq.config" -}}
{{- $v := .Values -}}
# Rendered by the chatmq Helm chart from its values; secrets are in
# /etc/chatmq/secret/secret.toml, read after this file.
[broker]
prefix = {{ $v.prefix | toJson }}
tcp = "0.0.0.0:1883"
{{- if $v.websocket.enabled }}
ws = "0.0.0.0:8083"
{{- else }}
# WebSocket disabled: the built-in default listener stays on loopback only.
ws = "127.0.0.1:8083"
{{- end }}
{{- if $v.tls.enabled }}
tls_listen = "0.0.0.0:8883"
{{- if include "chatmq.wss" . }}
wss = "0.0.0.0:8084"
{{- end }}
{{- end }}
open_topics = {{ $v.openTopics }}
{{- if $v.tls.enabled }}

[broker.tls]
cert = "/etc/chatmq/tls/tls.crt"
key = "/etc/chatmq/tls/tls.key"
{{- end }}
{{- if $v.auth.disableDemoUsers }}

# The built-in demo users, blanked (a blank password never logs in);
# secret.toml, read later, may set them again.
[broker.auth.users]
alice = ""
bob = ""
{{- end }}
{{- with $v.limits }}

[broker.limits]
{{- include "chatmq.tomlInts" . }}
{{- end }}
{{- with $v.router }}

[broker.router]
{{- include "chatmq.tomlInts" . }}
{{- end }}

[bridge]
{{- if include "chatmq.split" . }}
broker = {{ printf "%s:%d" (include "chatmq.mqttService" .) ($v.service.ports.mqtt | int) | toJson }}
{{- end }}
client_id = {{ $v.bridge.clientId | toJson }}
username = {{ $v.bridge.username | toJson }}
batch = {{ $v.bridge.batch | int64 }}
sends_per_sec = {{ include "chatmq.tomlFloat" $v.bridge.sendsPerSec }}
sends_burst = {{ include "chatmq.tomlFloat" $v.bridge.sendsBurst }}

[server]
http = "0.0.0.0:9090"
grace_period_ms = {{ mul $v.gracePeriodSeconds 1000 }}

[store]
backend = {{ $v.store.backend | toJson }}
{{- if eq $v.store.fsync "interval" }}
fsync = { intervalms = {{ $v.store.fsyncIntervalMs | int64 }} }
{{- else }}
fsync = {{ $v.store.fsync | toJson }}
{{- end }}
{{- if include "chatmq.scylla" . }}
{{- $s := $v.store.scylla }}

[store.scylla]
nodes = {{ $s.nodes | toJson }}
keyspace = {{ $s.keyspace | toJson }}
local_dc = {{ $s.localDc | toJson }}
tls_ca = {{ ternary (printf "/etc/chatmq/scylla-ca/%s" $s.tls.caKey) "" $s.tls.enabled | toJson }}
replication = {{ $s.replication | toJson }}
request_timeout_ms = {{ $s.requestTimeoutMs | int64 }}
{{- end }}
{{ end }}

{{/* secret.toml: logins, JWT keys, the bridge's password, ScyllaDB credentials. */}}
{{- define "chatmq.secretToml" -}}
{{- $v := .Values -}}
# Rendered by the chatmq Helm chart; read after chatmq.toml.
{{- with $v.auth.users }}

[broker.auth.users]
{{- range $user, $password := . }}
{{ $user | toJson }} = {{ $password | toJson }}
{{- end }}
{{- end }}
{{- $jwt := $v.auth.jwt }}
{{- if or $jwt.hs256Secret $jwt.rs256PublicKey }}

[broker.auth.jwt]
{{- with $jwt.hs256Secret }}
hs256_secret = {{ . | toJson }}
{{- end }}
{{- if $jwt.rs256PublicKey }}
rs256_public_key = "/etc/chatmq/secret/jwt.pub.pem"
{{- end }}
{{- with $jwt.issuer }}
issuer = {{ . | toJson }}
{{- end }}
{{- with $jwt.audience }}
audience = {{ . | toJson }}
{{- end }}
leeway_secs = {{ $jwt.leewaySecs | int64 }}
{{- end }}
{{- range $name, $account := $v.auth.services }}

[broker.auth.services.{{ $name | toJson }}]
password = {{ $account.password | toJson }}
allow = {{ $account.allow | toJson }}
{{- end }}
{{- if include "chatmq.split" . }}

# The bridge's service account on the broker and the bridge's own login:
# one value, so the two always agree.
[broker.auth.services.{{ $v.bridge.username | toJson }}]
password = {{ $v.bridge.password | toJson }}
allow = [{{ printf "%s/#" $v.prefix | toJson }}]

[bridge]
password = {{ $v.bridge.password | toJson }}
{{- end }}
{{- if and (include "chatmq.scylla" .) (or $v.store.scylla.username $v.store.scylla.password) }}

[store.scylla]
username = {{ $v.store.scylla.username | toJson }}
password = {{ $v.store.scylla.password | toJson }}
{{- end }}
{{ end }}

{{/* data of the chart's Secret (also the migration hook's copy). */}}
{{- define "chatmq.secretData" -}}
secret.toml: {{ include "chatmq.secretToml" . | b64enc }}
{{- with .Values.auth.jwt.rs256PublicKey }}
jwt.pub.pem: {{ . | b64enc }}
{{- end }}
{{- end }}

{{/* data of the chart's ConfigMap (also the migration hook's copy). */}}
{{- define "chatmq.configData" -}}
chatmq.toml: |
{{- include "chatmq.config" . | nindent 2 }}
{{- with .Values.extraConfig }}
extra.toml: |
{{- . | nindent 2 }}
{{- end }}
{{- end }}

{{/* checksums that restart the pods when their configuration changes */}}
{{- define "chatmq.checksums" -}}
checksum/config: {{ include "chatmq.configData" . | sha256sum }}
{{- if not .Values.auth.existingSecret }}
checksum/secret: {{ include "chatmq.secretData" . | sha256sum }}
{{- end }}
{{- end }}

{{/* `chatmq <mode> --config ... --data-dir ...` */}}
{{- define "chatmq.args" -}}
- {{ .mode }}
- --config
- /etc/chatmq/chatmq.toml
{{- if .ctx.Values.extraConfig }}
- --config
- /etc/chatmq/extra.toml
{{- end }}
- --config
- /etc/chatmq/secret/secret.toml
- --data-dir
- /var/lib/chatmq
{{- end }}

{{/*
The pod spec shared by the Deployments and the migration Job.
dict: ctx (root), mode (all|broker|bridge|migrate), config (ConfigMap name),
secret (Secret name), resources, mqtt (serves MQTT), store (opens the store),
server (long-running: ports and probes), claim (PVC name for the data dir, or "").
*/}}
{{- define "chatmq.podSpec" -}}
{{- $v := .ctx.Values -}}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .server }}
serviceAccountName: {{ include "chatmq.serviceAccountName" .ctx }}
{{- else if not $v.serviceAccount.create }}
serviceAccountName: {{ include "chatmq.serviceAccountName" .ctx }}
{{- end }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- if .server }}
terminationGracePeriodSeconds: {{ add $v.gracePeriodSeconds 10 }}
{{- else }}
restartPolicy: Never
{{- end }}
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
containers:
  - name: chatmq
    image: {{ include "chatmq.image" .ctx }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    args:
      {{- include "chatmq.args" . | nindent 6 }}
    env:
      - name: CHAT_LOG
        value: {{ $v.logLevel | quote }}
      {{- with $v.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- if .server }}
    ports:
      {{- if .mqtt }}
      - name: mqtt
        containerPort: 1883
        protocol: TCP
      {{- if $v.websocket.enabled }}
      - name: ws
        containerPort: 8083
        protocol: TCP
      {{- end }}
      {{- if $v.tls.enabled }}
      - name: mqtts
        containerPort: 8883
        protocol: TCP
      {{- end }}
      {{- if include "chatmq.wss" .ctx }}
      - name: wss
        containerPort: 8084
        protocol: TCP
      {{- end }}
      {{- end }}
      - name: metrics
        containerPort: 9090
        protocol: TCP
    livenessProbe:
      httpGet:
        path: /healthz
        port: metrics
      {{- toYaml $v.probes.liveness | nindent 6 }}
    readinessProbe:
      httpGet:
        path: /readyz
        port: metrics
      {{- toYaml $v.probes.readiness | nindent 6 }}
    {{- end }}
    {{- with .resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      {{- toYaml $v.securityContext | nindent 6 }}
    volumeMounts:
      - name: config
        mountPath: /etc/chatmq/chatmq.toml
        subPath: chatmq.toml
        readOnly: true
      {{- if $v.extraConfig }}
      - name: config
        mountPath: /etc/chatmq/extra.toml
        subPath: extra.toml
        readOnly: true
      {{- end }}
      - name: secret
        mountPath: /etc/chatmq/secret
        readOnly: true
      {{- if and .mqtt $v.tls.enabled }}
      - name: tls
        mountPath: /etc/chatmq/tls
        readOnly: true
      {{- end }}
      {{- if and .store (include "chatmq.scylla" .ctx) $v.store.scylla.tls.enabled }}
      - name: scylla-ca
        mountPath: /etc/chatmq/scylla-ca
        readOnly: true
      {{- end }}
      - name: data
        mountPath: /var/lib/chatmq
      - name: tmp
        mountPath: /tmp
volumes:
  - name: config
    configMap:
      name: {{ .config }}
  - name: secret
    secret:
      secretName: {{ .secret }}
      defaultMode: 288 # 0440: readable by fsGroup 65532
  {{- if and .mqtt $v.tls.enabled }}
  - name: tls
    secret:
      secretName: {{ $v.tls.secretName }}
      defaultMode: 288
  {{- end }}
  {{- if and .store (include "chatmq.scylla" .ctx) $v.store.scylla.tls.enabled }}
  - name: scylla-ca
    secret:
      secretName: {{ $v.store.scylla.tls.caSecret }}
  {{- end }}
  - name: data
    {{- if .claim }}
    persistentVolumeClaim:
      claimName: {{ .claim }}
    {{- else }}
    emptyDir: {}
    {{- end }}
  - name: tmp
    emptyDir: {}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
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
