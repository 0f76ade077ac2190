{{/* The release's full name, at most 63 characters. */}}
{{- define "ratelimiter.fullname" -}}
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

{{- define "ratelimiter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the service's pods. */}}
{{- define "ratelimiter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ratelimiter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: ratelimiter
{{- end -}}

{{- define "ratelimiter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ratelimiter
{{- end -}}

{{- define "ratelimiter.redisName" -}}
{{- printf "%s-redis" (include "ratelimiter.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ratelimiter.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ratelimiter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "ratelimiter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ratelimiter.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Whether the release runs its own Redis: asked for, and no external one named. */}}
{{- define "ratelimiter.bundledRedis" -}}
{{- if and .Values.redis.statefulset.enabled (not .Values.redis.url) (not .Values.redis.urlSecret.name) -}}true{{- end -}}
{{- end -}}

{{/* The Secret and key holding the bundled Redis's password. */}}
{{- define "ratelimiter.redisPasswordSecret" -}}
{{- default (include "ratelimiter.redisName" .) .Values.redis.statefulset.auth.existingSecret -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: at least preStop + shutdown delay + drain. */}}
{{- define "ratelimiter.gracePeriod" -}}
{{- $s := .Values.shutdown -}}
{{- $needed := add $s.preStopSleepSeconds $s.shutdownDelaySeconds $s.drainTimeoutSeconds -}}
{{- if kindIs "invalid" $s.terminationGracePeriodSeconds -}}
{{- add $needed $s.graceMarginSeconds -}}
{{- else if lt (int $s.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "shutdown.terminationGracePeriodSeconds (%v) is below preStopSleepSeconds + shutdownDelaySeconds + drainTimeoutSeconds (%v): the kubelet would kill pods mid-drain" $s.terminationGracePeriodSeconds $needed) -}}
{{- else -}}
{{- $s.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}
