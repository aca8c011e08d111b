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
"true" when the replicas use Leases (teal run --leader-elect): leaderElection.enabled, more than
one shard, or the deprecated peering.enabled.
*/}}
{{- define "teal.leases" -}}
{{- $peering := .Values.peering | default dict }}
{{- if or .Values.leaderElection.enabled (gt (int .Values.leaderElection.shards) 1) (get $peering "enabled") }}true{{ end }}
{{- end }}

{{/* The Lease name: leaderElection.leaseName, or the deprecated peering.name when peering.enabled. */}}
{{- define "teal.leaseName" -}}
{{- $peering := .Values.peering | default dict }}
{{- if and (get $peering "enabled") (get $peering "name") }}{{ get $peering "name" }}{{ else }}{{ .Values.leaderElection.leaseName }}{{ end }}
{{- end }}

{{/*
Validations the JSON schema cannot express (it sees values, not the release).
*/}}
{{- define "teal.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not (include "teal.leases" .)) }}
{{- fail "replicas > 1 needs leaderElection.enabled=true (the replicas share the work through Leases)" }}
{{- end }}
{{- with .Values.leaderElection }}
{{- if not (and (gt (float64 .leaseDuration) (float64 .renewDeadline)) (gt (float64 .renewDeadline) (float64 .retryPeriod))) }}
{{- fail "leaderElection needs leaseDuration > renewDeadline > retryPeriod" }}
{{- end }}
{{- end }}
{{- if and (eq .Values.rbac.scope "namespaced") (eq (len .Values.watchNamespaces) 0) }}
{{- fail "rbac.scope=namespaced needs watchNamespaces (a list of namespaces to watch)" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" }}
{{- end }}
{{- end }}

{{/* The name of the CRD in a document of files/crds/ (empty for anything else). */}}
{{- define "teal.crd.name" -}}
{{- if regexMatch "(?m)^kind: CustomResourceDefinition\\s*$" . }}
{{- regexFind "(?m)^  name: \\S+" . | trimPrefix "  name: " }}
{{- end }}
{{- end }}

{{/*
"true" when this release may render the CRD (list $ name): absent from the cluster, or
made by this release (Helm's ownership annotations). Always true under `helm template`.
*/}}
{{- define "teal.crd.ours" -}}
{{- $root := index . 0 }}
{{- $live := lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition" "" (index . 1) }}
{{- $meta := dig "metadata" "annotations" dict $live }}
{{- $release := and (eq (get $meta "meta.helm.sh/release-name") $root.Release.Name) (eq (get $meta "meta.helm.sh/release-namespace") $root.Release.Namespace) }}
{{- if or (not $live) $release }}true{{ end }}
{{- end }}

{{/* The CRDs that exist and belong to something else: left as they are (comma-separated). */}}
{{- define "teal.crd.foreign" -}}
{{- $names := list }}
{{- if .Values.crds.install }}
{{- range $path, $_ := .Files.Glob "files/crds/*.yaml" }}
{{- range $doc := splitList "\n---\n" ($.Files.Get $path) }}
{{- $name := include "teal.crd.name" $doc }}
{{- if and $name (not (include "teal.crd.ours" (list $ $name))) }}
{{- $names = append $names $name }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- join ", " $names }}
{{- end }}

{{/* metadata.annotations of the CRDs (indented for the top of metadata:). */}}
{{- define "teal.crd.annotations" -}}
{{- $ann := dict }}
{{- if .Values.crds.keep }}
{{- $_ := set $ann "helm.sh/resource-policy" "keep" }}
{{- end }}
{{- $ann = merge $ann .Values.crds.annotations }}
{{- if $ann }}
{{- printf "  annotations:\n%s\n" (toYaml $ann | indent 4) }}
{{- end }}
{{- end }}
