{{/* Names and labels shared by every template. */}}

{{- define "teal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "teal.fullname" -}}
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

{{- define "teal.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "teal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "teal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "teal.labels" -}}
helm.sh/chart: {{ include "teal.chart" . }}
{{ include "teal.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: teal
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "teal.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "teal.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "teal.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Is the operator restricted to a list of namespaces? */}}
{{- define "teal.namespaced" -}}
{{- if or (eq .Values.rbac.scope "namespaced") (gt (len .Values.watchNamespaces) 0) }}true{{ end }}
{{- end }}

{{/*
Validations the JSON schema cannot express (it sees values, not the release).
*/}}
{{- define "teal.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.peering.enabled) }}
{{- fail "replicas > 1 needs peering.enabled=true (kopf peering elects the active replica)" }}
{{- end }}
{{- if and (eq .Values.rbac.scope "namespaced") (eq (len .Values.watchNamespaces) 0) }}
{{- fail "rbac.scope=namespaced needs watchNamespaces (a list of namespaces to watch)" }}
{{- end }}
{{- if and (gt (int .Values.replicas) 1) (not (kindIs "invalid" .Values.peering.priority)) }}
{{- fail "peering.priority gives every replica the same priority (kopf then pauses them all); leave it null with replicas > 1" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" }}
{{- end }}
{{- end }}
