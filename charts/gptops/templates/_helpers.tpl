{{- define "gptops.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "gptops.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "gptops.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gptops.serviceAccountName" -}}
{{- default (include "gptops.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "gptops.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}
{{- end -}}

{{/* The namespaced permissions of the operator: its children, read-only pods and claims, events. */}}
{{- define "gptops.namespacedRules" -}}
{{- /* Exactly what a whole lifecycle uses (tests/cluster/test_security_cluster.py reads it from the API server's audit
log and fails on any grant left unused). Children are observed from watch caches (list, watch); a server-side apply
that creates needs create as well as patch. */ -}}
- apiGroups: ["gptops.io"]
  resources: ["gptmodels", "finetunejobs"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["gptops.io"]
  resources: ["gptmodels/status", "finetunejobs/status"]
  verbs: ["patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create"]
{{- /* Used only where a feature is on (the lifecycle of the security test lists them as such): the ArtifactsShared
condition reads the claim spec.artifacts.pvc names; spec.serving.autoscaling makes a KEDA ScaledObject where KEDA is
installed (server-side apply: create and patch). */}}
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get"]
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
