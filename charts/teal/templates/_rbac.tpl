{{/*
The namespaced permissions the operator needs. In cluster mode they go into the
ClusterRole, in namespaced mode into a Role in each watched namespace.
*/}}
{{- define "teal.rbac.namespacedRules" -}}
# Rollouts: watch them, keep kopf's annotations/finalizers, write status.
- apiGroups: ["teal.dev"]
  resources: ["rollouts"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["teal.dev"]
  resources: ["rollouts/status"]
  verbs: ["get", "patch", "update"]
# Owner references with blockOwnerDeletion on the colour Deployments need this where
# the OwnerReferencesPermissionEnforcement admission plugin is on.
- apiGroups: ["teal.dev"]
  resources: ["rollouts/finalizers"]
  verbs: ["update"]
- apiGroups: ["teal.dev"]
  resources: ["analysistemplates"]
  verbs: ["get", "list", "watch"]
# Release windows and freezes: read them, report a policy's validity on its status.
- apiGroups: ["teal.dev"]
  resources: ["releasepolicies"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["teal.dev"]
  resources: ["releasepolicies/status"]
  verbs: ["get", "patch"]
# The two colour Deployments <name>-blue / <name>-green.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Scaling a colour up and down goes through the scale subresource.
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
# Revision history for `kubectl teal undo` and fast rollback.
- apiGroups: ["apps"]
  resources: ["controllerrevisions"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Active/preview Services (selector switch) and the per-colour Services; never deleted.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.rbac.secrets }}
# Prometheus credentials named in spec.analysis.prometheus (read only, no list/watch).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
{{- if .Values.rbac.trafficRouters.gatewayAPI }}
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "update", "patch"]
{{- end }}
{{- if .Values.rbac.trafficRouters.nginx }}
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- end }}
{{- if .Values.rbac.trafficRouters.istio }}
- apiGroups: ["networking.istio.io"]
  resources: ["virtualservices"]
  verbs: ["get", "list", "watch", "update", "patch"]
{{- end }}
{{- end }}

{{/* Cluster-scoped permissions, needed in both modes. */}}
{{- define "teal.rbac.clusterRules" -}}
- apiGroups: ["teal.dev"]
  resources: ["clusteranalysistemplates"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["teal.dev"]
  resources: ["clusterreleasepolicies"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["teal.dev"]
  resources: ["clusterreleasepolicies/status"]
  verbs: ["get", "patch"]
{{- if not (include "teal.namespaced" .) }}
# A cluster-wide kopf operator follows CRDs appearing at run time (a Gateway API installed
# after Teal gets its routes watched without a restart). Read only.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}
{{- end }}
