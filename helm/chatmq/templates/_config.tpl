{{/* chatmq.toml (ConfigMap) and secret.toml (Secret), rendered from the values. */}}

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

[broker.auth]
# the binary's demo users alice/alice-pw and bob/bob-pw
demo_users = {{ $v.auth.demoUsers }}
{{- /* the packet limit follows the bridge's payload limit unless set */}}
{{- $limits := deepCopy ($v.limits | default dict) }}
{{- if not (hasKey $limits "max_packet_bytes") }}
{{- $_ := set $limits "max_packet_bytes" (add ($v.bridge.payloadMaxBytes | int64) 1024) }}
{{- end }}
{{- /* a cluster's broker closes its users over half the grace period at a
rolling update, so they reconnect to the other brokers gradually */}}
{{- if and (include "chatmq.cluster" .) (not (hasKey $limits "shutdown_spread_ms")) }}
{{- $_ := set $limits "shutdown_spread_ms" (mul ($v.gracePeriodSeconds | int64) 500) }}
{{- end }}

[broker.limits]
{{- include "chatmq.tomlInts" $limits }}
{{- with $v.router }}

[broker.router]
{{- include "chatmq.tomlInts" . }}
{{- end }}

[bridge]
{{- /* a cluster's bridges connect to every broker ([cluster] brokers) instead */}}
{{- if include "chatmq.split" . }}
broker = {{ printf "%s:%d" (include "chatmq.mqttService" .) ($v.service.ports.mqtt | int) | toJson }}
{{- end }}
client_id = {{ $v.bridge.clientId | toJson }}
username = {{ $v.bridge.username | toJson }}
batch = {{ $v.bridge.batch | int64 }}
sends_per_sec = {{ include "chatmq.tomlFloat" $v.bridge.sendsPerSec }}
sends_burst = {{ include "chatmq.tomlFloat" $v.bridge.sendsBurst }}
payload_max_bytes = {{ $v.bridge.payloadMaxBytes | int64 }}
body_max_bytes = {{ $v.bridge.bodyMaxBytes | int64 }}
meta_max_bytes = {{ $v.bridge.metaMaxBytes | int64 }}
history_limit_default = {{ $v.bridge.historyLimitDefault | int64 }}
history_limit_max = {{ $v.bridge.historyLimitMax | int64 }}
{{- if include "chatmq.cluster" . }}

[cluster]
# Rooms and users are hashed into this many partitions: the same on every
# broker and bridge, so it lives here, in the file they all read. The bridges'
# own [cluster] keys are in cluster.toml, which only they read: scaling the
# bridges does not restart the brokers.
partitions = {{ $v.cluster.partitions | int64 }}
{{- end }}

[server]
http = "0.0.0.0:9090"
grace_period_ms = {{ mul $v.gracePeriodSeconds 1000 }}
# the demo chat page on the metrics port (off unless demoPage)
demo = {{ $v.demoPage }}

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

{{/*
cluster.toml (cluster mode, bridges only): the rest of [cluster]. bridges is
the StatefulSet's replica count, so the two always agree; bridge_ordinal is
left out: each bridge takes it from its pod name (<fullname>-bridge-<k>).
*/}}
{{- define "chatmq.clusterToml" -}}
{{- $c := .Values.cluster -}}
# Rendered by the chatmq Helm chart: the bridges' [cluster] keys, read after
# chatmq.toml (which holds partitions).
[cluster]
bridges = {{ $c.bridgeReplicas | int64 }}
# Every broker: the headless Service resolves to one address per ready broker
# pod, resolved again every resolve_interval_ms. The port is the pods' own
# (a headless Service does not remap ports).
brokers = [{{ printf "%s.%s.svc:1883" (include "chatmq.brokerHeadless" .) .Release.Namespace | toJson }}]
resolve_interval_ms = {{ $c.resolveIntervalMs | int64 }}
presence_grace_ms = {{ $c.presenceGraceMs | int64 }}
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
{{- if include "chatmq.apart" . }}

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

{{/* the ConfigMap's files every pod reads */}}
{{- define "chatmq.sharedConfigData" -}}
chatmq.toml: |
{{- include "chatmq.config" . | nindent 2 }}
{{- with .Values.extraConfig }}
extra.toml: |
{{- . | nindent 2 }}
{{- end }}
{{- end }}

{{/* data of the chart's ConfigMap (also the migration hook's copy). */}}
{{- define "chatmq.configData" -}}
{{- include "chatmq.sharedConfigData" . }}
{{- if include "chatmq.cluster" . }}
cluster.toml: |
{{- include "chatmq.clusterToml" . | nindent 2 }}
{{- end }}
{{- end }}

{{/* checksums that restart the pods when their configuration changes
(cluster.toml has its own, on the bridges' pods only) */}}
{{- define "chatmq.checksums" -}}
checksum/config: {{ include "chatmq.sharedConfigData" . | sha256sum }}
{{- if not .Values.auth.existingSecret }}
checksum/secret: {{ include "chatmq.secretData" . | sha256sum }}
{{- end }}
{{- end }}
