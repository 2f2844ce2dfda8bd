{{/* Egress rules shared by the NetworkPolicies (networkpolicies.yaml). */}}

{{- define "torl.np.dns" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: kube-system
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
{{- end -}}
{{- define "torl.np.hub" -}}
{{- if eq .Values.model.source "hub" }}
- to:
    {{- if .Values.networkPolicy.hubEgressCIDRs }}
    {{- range .Values.networkPolicy.hubEgressCIDRs }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
    {{- else }}
    - ipBlock:
        cidr: 0.0.0.0/0
        except: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16]
    {{- end }}
  ports:
    - {protocol: TCP, port: 443}
{{- end }}
{{- end -}}
{{- define "torl.np.redisEgress" -}}
{{- if .Values.redis.enabled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "torl.selectorLabels" (dict "root" . "component" "redis") | nindent 10 }}
  ports:
    - {protocol: TCP, port: 6379}
{{- else }}
- to:
    - ipBlock: {cidr: 0.0.0.0/0}
  ports:
    - {protocol: TCP, port: {{ .Values.redis.external.port }}}
{{- end }}
{{- end -}}
{{- define "torl.np.collectivePorts" -}}
- {protocol: TCP, port: {{ .Values.learner.collectivePorts.start }}, endPort: {{ .Values.learner.collectivePorts.end }}}
{{- end -}}
{{- define "torl.np.learnerRankPorts" -}}
- {protocol: TCP, port: {{ .Values.learner.rendezvousPort }}}
{{ include "torl.np.collectivePorts" . }}
{{- end -}}
