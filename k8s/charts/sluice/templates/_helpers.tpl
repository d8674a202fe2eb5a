{{/*
The prefix of every object's name. At most 40 characters, so that a backend pod's name
(<fullname>-backend-<cluster>-<n>) and its StatefulSet's revision label stay within 63.
*/}}
{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sluice.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: sluice
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selects the pods of one part: (dict "root" $ "component" "backend"). */}}
{{- define "sluice.selector" -}}
app.kubernetes.io/name: sluice
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sluice.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "sluice.scheme" -}}
{{ if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end -}}

{{/* The DNS suffix of the namespace's services: <namespace>.svc.<domain>. */}}
{{- define "sluice.svcSuffix" -}}
{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}
{{- end -}}

{{- define "sluice.authSecret" -}}
{{ .Values.auth.existingSecret | default (printf "%s-auth" (include "sluice.fullname" .)) }}
{{- end -}}

{{/* etcd's client URLs, comma-separated: the chart's members, or the external ones. */}}
{{- define "sluice.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- $fullname := include "sluice.fullname" . -}}
{{- $scheme := include "sluice.scheme" . -}}
{{- $suffix := include "sluice.svcSuffix" . -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $urls = append $urls (printf "%s://%s-etcd-%d.%s-etcd.%s:2379" $scheme $fullname $i $fullname $suffix) -}}
{{- end -}}
{{- join "," $urls -}}
{{- else -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- end -}}
{{- end -}}

{{/* The settings every Sluice service's config file starts from. */}}
{{- define "sluice.baseConfig" -}}
{{- $config := dict -}}
{{- if .root.Values.tls.enabled -}}
{{- $_ := set $config "tls_cert" "/etc/sluice/tls/tls.crt" -}}
{{- $_ := set $config "tls_key" "/etc/sluice/tls/tls.key" -}}
{{- $_ := set $config "tls_ca" "/etc/sluice/tls/ca.crt" -}}
{{- else -}}
{{- $_ := set $config "insecure" true -}}
{{- end -}}
{{- if .root.Values.otlpEndpoint -}}
{{- $_ := set $config "otlp_endpoint" .root.Values.otlpEndpoint -}}
{{- end -}}
{{- $_ := set $config "grpc_addr" (printf "0.0.0.0:%d" (int .grpc)) -}}
{{- $_ := set $config "admin_addr" (printf "0.0.0.0:%d" (add1 (int .grpc))) -}}
{{- if .etcd -}}
{{- $_ := set $config "etcd_endpoints" (splitList "," (include "sluice.etcdEndpoints" .root)) -}}
{{- $_ := set $config "etcd_root" .root.Values.etcd.root -}}
{{- end -}}
{{- toJson $config -}}
{{- end -}}

{{/* Environment every Sluice container gets. */}}
{{- define "sluice.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: SLUICE_LOG_JSON
  value: {{ .Values.logJson | quote }}
{{- end -}}

{{/* Volumes every Sluice pod mounts: its config, its TLS Secret, and a writable /tmp. */}}
{{- define "sluice.volumes" -}}
- name: config
  configMap:
    name: {{ include "sluice.fullname" .root }}-config
{{- if .root.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "sluice.fullname" .root }}-tls-{{ .kind }}
{{- end }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "sluice.volumeMounts" -}}
- name: config
  mountPath: /etc/sluice/config
  readOnly: true
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/sluice/tls
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Readiness and liveness on the admin port. */}}
{{- define "sluice.probes" -}}
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
  periodSeconds: 2
  failureThreshold: 2
livenessProbe:
  httpGet:
    path: /healthz
    port: admin
  initialDelaySeconds: 10
  periodSeconds: 10
  failureThreshold: 6
{{- end -}}

{{- define "sluice.podSpecCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A flat config file: each setting as `key = value`, the value as JSON, which TOML reads the
    same for strings, numbers, booleans and lists of them (toToml would write 5 as 5.0). */}}
{{- define "sluice.toml" -}}
{{- range $key := keys . | sortAlpha }}
{{ $key }} = {{ get $ $key | toJson }}
{{- end }}
{{- end -}}
