{{/* The pod spec shared by the workloads and the migration Job. */}}

{{/* `chatmq <mode> --config ... --data-dir ...` */}}
{{- define "chatmq.args" -}}
- {{ .mode }}
- --config
- /etc/chatmq/chatmq.toml
{{- if .clusterToml }}
- --config
- /etc/chatmq/cluster.toml
{{- end }}
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
The pod spec shared by the Deployments, the StatefulSet and the migration Job.
dict: ctx (root), mode (all|broker|bridge|migrate), config (ConfigMap name),
secret (Secret name), resources, mqtt (serves MQTT), store (opens the store),
server (long-running: ports and probes), claim (PVC name for the data dir, or ""),
clusterToml (a cluster's bridge: reads cluster.toml; optional).
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
      {{- if .clusterToml }}
      - name: config
        mountPath: /etc/chatmq/cluster.toml
        subPath: cluster.toml
        readOnly: true
      {{- end }}
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
