{{- define "agentdetect.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "agentdetect.fullname" -}}
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

{{- define "agentdetect.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "agentdetect.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentdetect.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "agentdetect.labels" -}}
helm.sh/chart: {{ include "agentdetect.chart" . }}
{{ include "agentdetect.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* registry/repository:tag, or registry/repository@digest when a digest is given. */}}
{{- define "agentdetect.image" -}}
{{- $repo := .Values.image.repository -}}
{{- with .Values.image.registry }}{{ $repo = printf "%s/%s" . $repo }}{{ end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "agentdetect.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "agentdetect.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The kopf peering object shared by the replicas. */}}
{{- define "agentdetect.peering" -}}
{{- include "agentdetect.fullname" . -}}
{{- end -}}

{{/* The node agents (detection.mode=node): their own name, so no selector of the operator's
(Deployment, Service, PodDisruptionBudget) ever matches their pods. */}}
{{- define "agentdetect.nodeSelectorLabels" -}}
app.kubernetes.io/name: {{ include "agentdetect.name" . }}-node
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "agentdetect.nodeLabels" -}}
helm.sh/chart: {{ include "agentdetect.chart" . }}
{{ include "agentdetect.nodeSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: node-agent
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "agentdetect.nodeServiceAccountName" -}}
{{- printf "%s-node" (include "agentdetect.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "agentdetect.nodeMode" -}}
{{- if and .Values.detection.enabled (eq .Values.detection.mode "node") -}}true{{- end -}}
{{- end -}}
