{{/* Names, labels and shared pod pieces. Every helper is prefixed "torl.". */}}

{{- define "torl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "torl.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects: (dict "root" $ "component" "reward") */}}
{{- define "torl.componentName" -}}
{{- printf "%s-%s" (include "torl.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "torl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "torl.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "torl.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "torl.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: torl
{{- end -}}

{{/* Labels of the chart's objects that belong to no single component. */}}
{{- define "torl.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "torl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: torl
{{- end -}}

{{/* Image reference of a torl service: (dict "root" $ "image" .Values.reward.image) */}}
{{- define "torl.image" -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.image.tag -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .image.repository $tag -}}
{{- end -}}

{{- define "torl.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "torl.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext -}}
{{- end -}}

{{/* Scheduling keys of a component section (nodeSelector, tolerations, affinity). */}}
{{- define "torl.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
The config file of one service (torl <svc> serve --config /etc/torl/config.yaml): the user's
`config` map merged over what the chart must set (ports, bind addresses, logging).
(dict "root" $ "base" $chartSet "user" $userConfig)
*/}}
{{- define "torl.serviceConfig" -}}
{{- $merged := mustMergeOverwrite (dict) .base (deepCopy .user) -}}
{{- toYaml $merged -}}
{{- end -}}

{{/* Redis endpoint pieces. */}}
{{- define "torl.redisHost" -}}
{{- if .Values.redis.enabled -}}
{{- include "torl.componentName" (dict "root" . "component" "redis") -}}
{{- else -}}
{{- required "redis.external.host is required when redis.enabled=false" .Values.redis.external.host -}}
{{- end -}}
{{- end -}}

{{- define "torl.redisPort" -}}
{{- if .Values.redis.enabled -}}6379{{- else -}}{{ .Values.redis.external.port }}{{- end -}}
{{- end -}}

{{- define "torl.redisSecretName" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecret -}}
{{- else -}}
{{- include "torl.componentName" (dict "root" . "component" "redis") -}}
{{- end -}}
{{- end -}}

{{/*
Env that gives a service its Redis URL without putting the password in a ConfigMap:
(dict "root" $ "name" "TORL_LEARNER_REDIS_URL")
*/}}
{{- define "torl.redisEnv" -}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "torl.redisSecretName" .root }}
      key: {{ .root.Values.redis.auth.existingSecretKey }}
- name: {{ .name }}
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:%s/%d" (include "torl.redisHost" .root) (include "torl.redisPort" .root) (int (ternary 0 .root.Values.redis.external.db .root.Values.redis.enabled)) | quote }}
{{- end -}}

{{/* Where the model lies inside rollout and learner pods. */}}
{{- define "torl.modelDir" -}}
{{- if eq .Values.model.source "hub" -}}
{{- printf "/models/hub/%s/%s" .Values.model.name .Values.model.hub.revision -}}
{{- else -}}
{{- printf "/models/%s" .Values.model.name -}}
{{- end -}}
{{- end -}}

{{/* Whether the hub download goes into the shared cache PVC ("true" or ""). */}}
{{- define "torl.sharedModelCache" -}}
{{- if and (eq .Values.model.source "hub") .Values.model.hub.sharedCache.enabled -}}true{{- end -}}
{{- end -}}

{{- define "torl.modelCacheClaim" -}}
{{- default (printf "%s-models" (include "torl.fullname" .)) .Values.model.hub.sharedCache.existingClaim -}}
{{- end -}}

{{/* Volumes for the model: (root context). */}}
{{- define "torl.modelVolume" -}}
- name: model
{{- if include "torl.sharedModelCache" . }}
  persistentVolumeClaim:
    claimName: {{ include "torl.modelCacheClaim" . }}
{{- else if eq .Values.model.source "hub" }}
  emptyDir:
    sizeLimit: {{ .Values.model.hub.cacheSizeLimit }}
{{- else }}
  persistentVolumeClaim:
    claimName: {{ required "model.volume.claimName is required when model.source=volume" .Values.model.volume.claimName }}
    readOnly: true
{{- end }}
{{- end -}}

{{/*
Init container that downloads the model from the hub into the `model` volume (source=hub only):
(dict "root" $ "image" $imageRef). Into the shared cache, pods take a file lock and skip the
download when a previous pod left the completion marker, so the model is fetched once.
*/}}
{{- define "torl.modelDownloadInit" -}}
{{- if eq .root.Values.model.source "hub" }}
- name: download-model
  image: {{ .image }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command:
    - python
    - -c
    - |
      {{- .root.Files.Get "files/download_model.py" | nindent 6 }}
  env:
    - name: MODEL_NAME
      value: {{ .root.Values.model.name | quote }}
    - name: MODEL_REVISION
      value: {{ .root.Values.model.hub.revision | quote }}
    - name: MODEL_DIR
      value: {{ include "torl.modelDir" .root | quote }}
    - name: HF_HOME
      value: /tmp/hf
    {{- if .root.Values.model.hub.tokenSecret }}
    - name: HF_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ .root.Values.model.hub.tokenSecret }}
          key: {{ .root.Values.model.hub.tokenSecretKey }}
    {{- end }}
  securityContext:
    {{- include "torl.containerSecurityContext" .root | nindent 4 }}
  resources:
    requests: {cpu: 500m, memory: 1Gi}
    limits: {cpu: "2", memory: 4Gi}
  volumeMounts:
    - {name: model, mountPath: /models}
    - {name: tmp, mountPath: /tmp}
{{- end }}
{{- end -}}

{{/* Bytes of a Kubernetes quantity (4Gi, 500M, 1.5Ti, 1024), as an integer string. */}}
{{- define "torl.quantityBytes" -}}
{{- $q := toString . -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $q -}}
{{- $suffix := trimPrefix $num $q -}}
{{- $mult := dict "" 1.0 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 -}}
{{- if not (hasKey $mult $suffix) -}}
{{- fail (printf "cannot read %q as a byte quantity" $q) -}}
{{- end -}}
{{- printf "%.0f" (mulf (float64 $num) (get $mult $suffix)) -}}
{{- end -}}

{{/* Bytes per element of a dtype name. */}}
{{- define "torl.dtypeBytes" -}}
{{- get (dict "float32" "4" "bfloat16" "2" "float16" "2") . | required (printf "unknown dtype %q" .) -}}
{{- end -}}

{{/* Bytes of one full weight push: model.parameters x the size of (dict "root" $ "dtype" name). */}}
{{- define "torl.weightBytes" -}}
{{- printf "%.0f" (mulf (float64 .root.Values.model.parameters) (float64 (include "torl.dtypeBytes" .dtype))) -}}
{{- end -}}

{{/* The rollout's /dev/shm size: rollout.shmSizeLimit, or 1.25 x the weight bytes in GiB (at least 1Gi). */}}
{{- define "torl.rolloutShmSize" -}}
{{- if .Values.rollout.shmSizeLimit -}}
{{- .Values.rollout.shmSizeLimit -}}
{{- else -}}
{{- $bytes := float64 (include "torl.weightBytes" (dict "root" . "dtype" (include "torl.weightSyncDtype" .))) -}}
{{- printf "%dGi" (max 1 (int (ceil (divf (mulf $bytes 1.25) 1073741824.0)))) -}}
{{- end -}}
{{- end -}}

{{/* The weight-sync dtype the learner will push: its config's, else the model's (the chart's default). */}}
{{- define "torl.weightSyncDtype" -}}
{{- $ws := dig "weight_sync" "dtype" "" .Values.learner.config -}}
{{- default .Values.model.dtype $ws -}}
{{- end -}}

{{/* Checksum annotation so pods restart when their config changes. */}}
{{- define "torl.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end -}}

{{/*
How a probe asks a service's grpc.health.v1: (dict "root" $ "port" N "component" "reward").
Plaintext: kubelet's native gRPC probe. With tls.enabled the native probe cannot work (kubelet's
gRPC probe speaks plaintext only and has no client certificate for mTLS), so the probe execs
`python -m torl.common.healthcheck` in the container: the same health service, over TLS with the
mounted Secret, checking the certificate against the component's Service name. Probing the
plaintext metrics port instead would only show that the process is up, not that gRPC serves.
*/}}
{{- define "torl.grpcProbeAction" -}}
{{- if include "torl.tlsSecretFor" . -}}
{{- $dir := include "torl.tlsDir" .root -}}
exec:
  command:
    - python
    - -I
    - -m
    - torl.common.healthcheck
    - --target
    - {{ printf "127.0.0.1:%d" (int .port) | quote }}
    - --tls
    - --ca
    - {{ $dir }}/ca.crt
    - --server-name
    - {{ include "torl.componentName" (dict "root" .root "component" .component) }}
    {{- if and .root.Values.tls.mutual (ne .component "executor-runner") }}
    - --cert
    - {{ $dir }}/tls.crt
    - --key
    - {{ $dir }}/tls.key
    {{- end }}
{{- else -}}
grpc: {port: {{ .port }}}
{{- end -}}
{{- end -}}

{{/* Standard gRPC health probes: (dict "root" $ "port" N "component" "reward" ["startupFailures" N]). */}}
{{- define "torl.grpcProbes" -}}
startupProbe:
  {{- include "torl.grpcProbeAction" . | nindent 2 }}
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: {{ .startupFailures | default 60 }}
readinessProbe:
  {{- include "torl.grpcProbeAction" . | nindent 2 }}
  periodSeconds: 10
  timeoutSeconds: 5
livenessProbe:
  {{- include "torl.grpcProbeAction" . | nindent 2 }}
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 6
{{- end -}}

{{/* TLS between services (values tls.*): where the Secret is mounted in every gRPC container. */}}
{{- define "torl.tlsDir" -}}/etc/torl-secrets/tls{{- end -}}

{{- define "torl.tlsSecretName" -}}
{{- required "tls.secretName is required when tls.enabled=true: a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt (e.g. from a cert-manager Certificate)" .Values.tls.secretName -}}
{{- end -}}

{{/*
The TLS Secret a component mounts, "" for none: (dict "root" $ "component" "reward"). Runner pods
run untrusted code as the service's own uid, which could read a mounted key, so they never get the
services' Secret: only tls.runnerSecretName (a server-only certificate of their own), or nothing
(their gRPC stays plaintext, reachable from gateway pods only by NetworkPolicy).
*/}}
{{- define "torl.tlsSecretFor" -}}
{{- if .root.Values.tls.enabled -}}
{{- if eq .component "executor-runner" -}}
{{- .root.Values.tls.runnerSecretName -}}
{{- else -}}
{{- include "torl.tlsSecretName" .root -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Secret's volumeMounts entry; nothing without a Secret. (dict "root" $ "component" "reward") */}}
{{- define "torl.tlsVolumeMount" -}}
{{- if include "torl.tlsSecretFor" . }}
- {name: tls, mountPath: {{ include "torl.tlsDir" .root }}, readOnly: true}
{{- end }}
{{- end -}}

{{/* The Secret's volume, readable by the pod's fsGroup only; nothing without a Secret. (dict "root" $ "component" "reward") */}}
{{- define "torl.tlsVolume" -}}
{{- $secret := include "torl.tlsSecretFor" . -}}
{{- if $secret }}
- name: tls
  secret:
    secretName: {{ $secret }}
    optional: false
    defaultMode: 0440
    items:
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
      - {key: ca.crt, path: ca.crt}
{{- end }}
{{- end -}}
