{{/*
Template-time consistency checks (docs/deploy.md, "Consistency checks"): combinations that would
install fine and then crash-loop or fail at the first weight push. Each fails `helm install` /
`helm template` with what is wrong and which value to change. Called from configmap.yaml with the
service configs as the pods will read them: (dict "root" $ "rollout" $cfg "learner" $cfg).
*/}}
{{- define "torl.checks" -}}
{{- $v := .root.Values -}}
{{- $engine := .rollout.engine | default dict -}}
{{- $weights := .rollout.weights | default dict -}}
{{- $ws := .learner.weight_sync | default dict -}}
{{- /* Service defaults where a config leaves a key out (each service config.py). */ -}}
{{- $wsDtype := $ws.dtype | default "float32" -}}
{{- $engineDtype := $engine.dtype | default "auto" -}}
{{- $tp := int ($engine.tensor_parallel_size | default 1) -}}
{{- $deadline := float64 ($ws.deadline_seconds | default 60) -}}
{{- $transfer := $engine.weight_transfer | default "grpc" -}}
{{- $staging := $weights.staging_dir | default "" -}}
{{- $maxUpdateGib := float64 ($weights.max_update_gib | default 64) -}}

{{- if ne $wsDtype $v.model.dtype -}}
{{- fail (printf "torl chart: learner.config.weight_sync.dtype (%s) differs from model.dtype (%s): the rollout rejects pushed weights of another dtype and the learner crash-loops. Set learner.config.weight_sync.dtype=%s (or leave it out: the chart uses model.dtype)." $wsDtype $v.model.dtype $v.model.dtype) -}}
{{- end -}}
{{- if and (ne $engineDtype "auto") (ne $engineDtype $v.model.dtype) -}}
{{- fail (printf "torl chart: rollout.config.engine.dtype (%s) differs from model.dtype (%s): weights pushed in the model's dtype would not match the engine. Leave engine.dtype out or set it to %s." $engineDtype $v.model.dtype $v.model.dtype) -}}
{{- end -}}
{{- if and (gt (int $v.rollout.gpus) 0) (ne $tp (int $v.rollout.gpus)) -}}
{{- fail (printf "torl chart: rollout.gpus (%d) differs from rollout.config.engine.tensor_parallel_size (%d): each replica gets %d GPUs and must shard the model over all of them. Leave tensor_parallel_size out (the chart sets it from rollout.gpus) or change rollout.gpus." (int $v.rollout.gpus) $tp (int $v.rollout.gpus)) -}}
{{- end -}}
{{- $bytes := float64 (include "torl.weightBytes" (dict "root" .root "dtype" $wsDtype)) -}}
{{- if and (eq $transfer "grpc") (or (eq $staging "") (hasPrefix "/dev/shm" $staging)) -}}
{{- $shm := float64 (include "torl.quantityBytes" (include "torl.rolloutShmSize" .root)) -}}
{{- if lt $shm $bytes -}}
{{- fail (printf "torl chart: rollout.shmSizeLimit (%s = %.2f GB) is smaller than one weight push (model.parameters %.0f x %s = %.2f GB), which is staged in /dev/shm: every push would fail. Raise rollout.shmSizeLimit or leave it empty (derived from the model)." (include "torl.rolloutShmSize" .root) (divf $shm 1e9) (float64 $v.model.parameters) $wsDtype (divf $bytes 1e9)) -}}
{{- end -}}
{{- end -}}
{{- if gt $bytes (mulf $maxUpdateGib 1073741824.0) -}}
{{- fail (printf "torl chart: one weight push (%.2f GB) exceeds rollout.config.weights.max_update_gib (%.0f GiB): the rollout refuses it. Raise max_update_gib." (divf $bytes 1e9) $maxUpdateGib) -}}
{{- end -}}
{{- $need := divf $bytes (mulf (float64 $v.checks.minPushMBps) 1e6) -}}
{{- if lt $deadline $need -}}
{{- fail (printf "torl chart: learner.config.weight_sync.deadline_seconds (%.0f) is too short for the model: a push of %.2f GB takes %.0f s at checks.minPushMBps=%v MB/s. Raise deadline_seconds to at least %.0f (or leave it out: the chart derives it)." $deadline (divf $bytes 1e9) $need $v.checks.minPushMBps (ceil $need)) -}}
{{- end -}}
{{- /* Weight sync over NCCL (weightSync.transport; docs/deploy.md, "Weight sync over NCCL"). */ -}}
{{- $wsTransport := $ws.transport | default "grpc" -}}
{{- if ne $wsTransport $transfer -}}
{{- fail (printf "torl chart: learner.config.weight_sync.transport (%s) differs from rollout.config.engine.weight_transfer (%s): the rollout would refuse every push. Set weightSync.transport=grpc|nccl and leave both keys out (the chart sets them together)." $wsTransport $transfer) -}}
{{- end -}}
{{- if eq $v.weightSync.transport "nccl" -}}
{{- if eq (int $v.rollout.gpus) 0 -}}
{{- fail "torl chart: weightSync.transport=nccl needs GPUs on the rollout replicas (rollout.gpus > 0): vLLM's NCCL weight transfer runs between GPUs. Use weightSync.transport=grpc on CPU." -}}
{{- end -}}
{{- if eq (int $v.learner.gpusPerNode) 0 -}}
{{- fail "torl chart: weightSync.transport=nccl needs a GPU learner (learner.gpusPerNode > 0): rank 0 broadcasts from its GPU. Use weightSync.transport=grpc with a CPU learner." -}}
{{- end -}}
{{- if $v.learner.leaderWorkerSet.enabled -}}
{{- fail "torl chart: weightSync.transport=nccl needs the StatefulSet learner: rollout pods reach the rendezvous at <learner>-0.<learner>-ranks, which learner.leaderWorkerSet.enabled does not create. Disable the LeaderWorkerSet or use weightSync.transport=grpc." -}}
{{- end -}}
{{- $port := int $v.weightSync.nccl.port -}}
{{- $taken := dict "learner.rendezvousPort" $v.learner.rendezvousPort "learner.grpcPort" $v.learner.grpcPort "learner.metricsPort" $v.learner.metricsPort -}}
{{- range $key, $other := $taken -}}
{{- if eq $port (int $other) -}}
{{- fail (printf "torl chart: weightSync.nccl.port (%d) is also %s on the learner's ordinal-0 pod: the NCCL rendezvous could not bind it. Pick another port." $port $key) -}}
{{- end -}}
{{- end -}}
{{- if and (ge $port (int $v.learner.collectivePorts.start)) (le $port (int $v.learner.collectivePorts.end)) -}}
{{- fail (printf "torl chart: weightSync.nccl.port (%d) lies in learner.collectivePorts (%d-%d), the ephemeral range NCCL and gloo connections take ports from: the rendezvous could find it in use. Pick a port outside that range." $port (int $v.learner.collectivePorts.start) (int $v.learner.collectivePorts.end)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
