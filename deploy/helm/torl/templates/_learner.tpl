{{/* Learner pods (learner.yaml): the rank wiring shared by the StatefulSet and the LeaderWorkerSet. */}}

{{/* Ranks per learner pod: one per GPU, one on a CPU node. */}}
{{- define "torl.learnerRanksPerNode" -}}
{{- max 1 (int .Values.learner.gpusPerNode) -}}
{{- end -}}

{{/* The label that picks the rank-0 pod (ordinal 0) out of the learner pods. */}}
{{- define "torl.learnerRank0Label" -}}
{{- if .Values.learner.leaderWorkerSet.enabled -}}
leaderworkerset.sigs.k8s.io/worker-index: "0"
{{- else -}}
statefulset.kubernetes.io/pod-name: {{ include "torl.componentName" (dict "root" . "component" "learner") }}-0
{{- end -}}
{{- end -}}

{{/* Address of the rendezvous (rank 0's pod): <learner>-0.<learner>-ranks.<ns>.svc, or the leader's
address the LeaderWorkerSet controller injects. */}}
{{- define "torl.learnerMasterAddr" -}}
{{- if .Values.learner.leaderWorkerSet.enabled -}}
$(LWS_LEADER_ADDRESS)
{{- else -}}
{{- $name := include "torl.componentName" (dict "root" . "component" "learner") -}}
{{- printf "%s-0.%s-ranks.%s.svc" $name $name .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/*
Probe action for a pod of which only ordinal 0 serves gRPC: other ordinals answer "alive" (their
torchrun agent exits, and the pod restarts, when a rank dies), ordinal 0 asks its gRPC health
service. (dict "root" $ "port" N)
*/}}
{{- define "torl.learnerRank0ProbeAction" -}}
{{- $action := include "torl.grpcProbeAction" (dict "root" .root "component" "learner" "port" .port) | fromYaml -}}
{{- $check := list "python" "-m" "torl.common.healthcheck" "--target" (printf "127.0.0.1:%d" (int .port)) -}}
{{- if hasKey $action "exec" -}}
{{- $check = $action.exec.command -}}
{{- end -}}
exec:
  command:
    {{- toYaml (concat (list "/bin/sh" "-c" "if [ \"${POD_NAME##*-}\" != 0 ]; then exit 0; fi; exec \"$@\"" "probe") $check) | nindent 4 }}
{{- end -}}

{{/*
One learner pod template: (dict "root" $ "image" $ref "probes" "grpc"|"ordinal0"|"none").
World size 1 runs `torl learner serve` itself; more ranks run it under torchrun, node rank = the
pod's ordinal, static rendezvous at ordinal 0.
*/}}
{{- define "torl.learnerPod" -}}
{{- $root := .root -}}
{{- $v := $root.Values.learner -}}
{{- $c := dict "root" $root "component" "learner" -}}
{{- $perNode := int (include "torl.learnerRanksPerNode" $root) -}}
{{- $world := mul (int $v.nodes) $perNode -}}
metadata:
  labels:
    {{- include "torl.selectorLabels" $c | nindent 4 }}
  annotations:
    {{- include "torl.configChecksum" $root | nindent 4 }}
spec:
  {{- include "torl.imagePullSecrets" $root | nindent 2 }}
  serviceAccountName: {{ include "torl.componentName" $c }}
  # Token only for the EndpointSlice reads above (the SA itself does not automount).
  automountServiceAccountToken: true
  enableServiceLinks: false
  {{- if and (gt (int $v.gpusPerNode) 0) $root.Values.gpuRuntimeClassName }}
  runtimeClassName: {{ $root.Values.gpuRuntimeClassName }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  {{- include "torl.scheduling" $v | nindent 2 }}
  {{- if eq $root.Values.model.source "hub" }}
  initContainers:
    {{- include "torl.modelDownloadInit" (dict "root" $root "image" .image) | nindent 4 }}
  {{- end }}
  containers:
    - name: learner
      image: {{ .image }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      {{- if gt $world 1 }}
      command:
        - /bin/sh
        - -c
        - exec python -m torch.distributed.run --node-rank "${NODE_RANK:-${POD_NAME##*-}}" "$@"
        - torchrun
      args:
        - --nnodes={{ $v.nodes }}
        - --nproc-per-node={{ $perNode }}
        - --master-addr={{ include "torl.learnerMasterAddr" $root }}
        - --master-port={{ $v.rendezvousPort }}
        - -m
        - torl.cli.main
        - learner
        - serve
        - --config
        - /etc/torl/config.yaml
      {{- else }}
      args: ["learner", "serve", "--config", "/etc/torl/config.yaml"]
      {{- end }}
      env:
        {{- include "torl.redisEnv" (dict "root" $root "name" "TORL_LEARNER_REDIS_URL") | nindent 8 }}
        - name: POD_NAME
          valueFrom:
            fieldRef: {fieldPath: metadata.name}
        {{- if $v.leaderWorkerSet.enabled }}
        - name: NODE_RANK
          valueFrom:
            fieldRef: {fieldPath: "metadata.labels['leaderworkerset.sigs.k8s.io/worker-index']"}
        {{- end }}
        - {name: HF_HOME, value: /tmp/hf}
        - {name: TORCH_EXTENSIONS_DIR, value: /tmp/torch_extensions}
      ports:
        - {name: grpc, containerPort: {{ $v.grpcPort }}, protocol: TCP}
        - {name: metrics, containerPort: {{ $v.metricsPort }}, protocol: TCP}
        - {name: rendezvous, containerPort: {{ $v.rendezvousPort }}, protocol: TCP}
      {{- if eq .probes "grpc" }}
      {{- include "torl.grpcProbes" (dict "root" $root "component" "learner" "port" $v.grpcPort "startupFailures" 360) | nindent 6 }}
      {{- else if eq .probes "ordinal0" }}
      startupProbe:
        {{- include "torl.learnerRank0ProbeAction" (dict "root" $root "port" $v.grpcPort) | nindent 8 }}
        periodSeconds: 5
        timeoutSeconds: 5
        failureThreshold: 360
      readinessProbe:
        {{- include "torl.learnerRank0ProbeAction" (dict "root" $root "port" $v.grpcPort) | nindent 8 }}
        periodSeconds: 10
        timeoutSeconds: 5
      livenessProbe:
        {{- include "torl.learnerRank0ProbeAction" (dict "root" $root "port" $v.grpcPort) | nindent 8 }}
        periodSeconds: 20
        timeoutSeconds: 5
        failureThreshold: 6
      {{- end }}
      securityContext:
        {{- include "torl.containerSecurityContext" $root | nindent 8 }}
      resources:
        requests:
          {{- toYaml $v.resources.requests | nindent 10 }}
          {{- if gt (int $v.gpusPerNode) 0 }}
          nvidia.com/gpu: {{ $v.gpusPerNode }}
          {{- end }}
        limits:
          {{- toYaml $v.resources.limits | nindent 10 }}
          {{- if gt (int $v.gpusPerNode) 0 }}
          nvidia.com/gpu: {{ $v.gpusPerNode }}
          {{- end }}
      volumeMounts:
        - {name: config, mountPath: /etc/torl, readOnly: true}
        {{- include "torl.tlsVolumeMount" (dict "root" $root "component" "learner") | nindent 8 }}
        - {name: model, mountPath: /models, readOnly: true}
        - {name: checkpoints, mountPath: /checkpoints}
        - {name: tmp, mountPath: /tmp}
        - {name: shm, mountPath: /dev/shm}
  volumes:
    - name: config
      configMap:
        name: {{ include "torl.componentName" $c }}-config
    {{- include "torl.tlsVolume" (dict "root" $root "component" "learner") | nindent 4 }}
    {{- include "torl.modelVolume" $root | nindent 4 }}
    - name: checkpoints
      persistentVolumeClaim:
        claimName: {{ default (printf "%s-checkpoints" (include "torl.componentName" $c)) $v.checkpoints.existingClaim }}
    - name: tmp
      emptyDir:
        sizeLimit: 16Gi
    - name: shm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $v.shmSizeLimit }}
{{- end -}}

{{/*
NCCL weight sync wiring (weightSync.transport=nccl), as YAML: the rendezvous address (learner
ordinal 0 through the "-ranks" Service), its port, the rollout's tensor-parallel degree and the
group's world size (the learner's rank 0 + one rank per rollout GPU).
*/}}
{{- define "torl.ncclWiring" -}}
{{- $name := include "torl.componentName" (dict "root" . "component" "learner") -}}
{{- $tp := max 1 (int .Values.rollout.gpus) -}}
address: {{ printf "%s-0.%s-ranks.%s.svc" $name $name .Release.Namespace }}
port: {{ int .Values.weightSync.nccl.port }}
tp: {{ $tp }}
worldSize: {{ add 1 (mul (int .Values.rollout.replicas) $tp) }}
packed: {{ .Values.weightSync.nccl.packed }}
{{- end -}}
