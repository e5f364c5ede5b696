{{/* Names, labels, images, the shared environment and the shared pod pieces. */}}

{{- define "searchrl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "searchrl.fullname" -}}
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

{{/* "searchrl.component" (dict "root" $ "name" "retriever") -> <fullname>-retriever */}}
{{- define "searchrl.component" -}}
{{- printf "%s-%s" (include "searchrl.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "searchrl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "searchrl.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "searchrl.labels" -}}
{{ include "searchrl.selectorLabels" . }}
app.kubernetes.io/part-of: searchrl
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* Image of a searchrl service; the reward image has no CPU/GPU variant. */}}
{{- define "searchrl.image" -}}
{{- $img := .root.Values.image -}}
{{- $tag := default .root.Chart.AppVersion $img.tag -}}
{{- if ne .name "reward" }}{{ $tag = printf "%s-%s" $tag $img.variant }}{{ end -}}
{{- $repo := printf "%s-%s" $img.prefix .name -}}
{{- if $img.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" $img.registry) $repo }}{{ end -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{- define "searchrl.authSecretName" -}}
{{- default (include "searchrl.component" (dict "root" . "name" "auth")) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "searchrl.redisSecretName" -}}
{{- default (include "searchrl.component" (dict "root" . "name" "redis")) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{/* The Redis URL with $(REDIS_PASSWORD) spliced in (Kubernetes expands it from the env var before it). */}}
{{- define "searchrl.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "searchrl.component" (dict "root" . "name" "redis")) -}}
{{- else -}}
{{- $url := required "redis.url: required when redis.enabled is false (an external Redis)" .Values.redis.url -}}
{{- regexReplaceAll "^(rediss?://)" $url "${1}:$(REDIS_PASSWORD)@" -}}
{{- end -}}
{{- end -}}

{{- define "searchrl.redisPort" -}}
{{- if .Values.redis.enabled -}}6379{{- else -}}
{{- $port := regexReplaceAll "^rediss?://[^/:]+:?([0-9]*).*$" .Values.redis.url "${1}" -}}
{{- default "6379" $port -}}
{{- end -}}
{{- end -}}

{{/* Stable DNS names of the rollout workers (StatefulSet pods behind the headless Service). */}}
{{- define "searchrl.rolloutAddrs" -}}
{{- $sts := include "searchrl.component" (dict "root" . "name" "rollout") -}}
{{- $addrs := list -}}
{{- range $i := until (int .Values.rollout.replicas) -}}
{{- $addrs = append $addrs (printf "%s-%d.%s.%s.svc:%v" $sts $i $sts $.Release.Namespace $.Values.config.rollout.port) -}}
{{- end -}}
{{- join "," $addrs -}}
{{- end -}}

{{/* The wiring of a searchrl service: the gRPC token from its Secret, service addresses, and for Redis clients
(rollout, trainer; "redis" true) the Redis URL with the password from the Secret. (dict "root" $ "redis" true) */}}
{{- define "searchrl.env" -}}
{{- $root := .root }}
- name: SEARCHRL_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "searchrl.authSecretName" $root }}
      key: {{ $root.Values.auth.existingSecretKey }}
{{- if .redis }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "searchrl.redisSecretName" $root }}
      key: {{ $root.Values.redis.auth.existingSecretKey }}
- name: SEARCHRL_REDIS_URL
  value: {{ include "searchrl.redisUrl" $root | quote }}
{{- end }}
- name: POD_IP  # where other pods reach this one (trainer.push_host / rollout.advertise_host default to it)
  valueFrom:
    fieldRef: {fieldPath: status.podIP}
- name: SEARCHRL_RETRIEVER_ADDR
  value: {{ printf "%s:%v" (include "searchrl.component" (dict "root" $root "name" "retriever")) $root.Values.config.retriever.port | quote }}
- name: SEARCHRL_REWARD_ADDR
  value: {{ printf "%s:%v" (include "searchrl.component" (dict "root" $root "name" "reward")) $root.Values.config.reward.port | quote }}
- name: SEARCHRL_TRAINER_ADDR
  value: {{ printf "%s:%v" (include "searchrl.component" (dict "root" $root "name" "trainer")) $root.Values.config.trainer.port | quote }}
{{- if $root.Values.rollout.enabled }}
- name: SEARCHRL_ROLLOUT_ADDRS
  value: {{ include "searchrl.rolloutAddrs" $root | quote }}
{{- end }}
- name: HF_HUB_OFFLINE
  value: "1"
{{- end -}}

{{- define "searchrl.needsRedis" -}}
{{- if or .Values.rollout.enabled .Values.trainer.enabled (include "searchrl.retrieverUsesRedis" .) }}true{{ end -}}
{{- end -}}

{{/* The retriever talks to Redis only for the shared query cache (config retriever.cache.redis_ttl_s > 0). */}}
{{- define "searchrl.retrieverUsesRedis" -}}
{{- if and .Values.retriever.enabled (gt (int (dig "cache" "redis_ttl_s" 0 .Values.config.retriever)) 0) }}true{{ end -}}
{{- end -}}

{{/* Pod annotations: config checksum (restart on config change) + Prometheus scrape hints. */}}
{{- define "searchrl.podAnnotations" -}}
checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
{{- if .root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .metricsPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A read-only shared volume: PVC, hostPath, or emptyDir. */}}
{{- define "searchrl.sharedVolume" -}}
- name: {{ .name }}
{{- if .spec.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .spec.existingClaim }}
    readOnly: true
{{- else if .spec.hostPath }}
  hostPath:
    path: {{ .spec.hostPath }}
    type: Directory
{{- else }}
  emptyDir: {}
{{- end }}
{{- end -}}

{{- define "searchrl.indexClaim" -}}
{{- default (include "searchrl.component" (dict "root" . "name" "index")) .Values.volumes.index.existingClaim -}}
{{- end -}}

{{/* gRPC probes (grpc.health.v1, native in Kubernetes >= 1.27) on the plain-text health port, which has its own
threads: long RPCs (weight streams, searches) cannot starve it. startupSeconds covers index/model loading. */}}
{{- define "searchrl.probes" -}}
startupProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: 10
  failureThreshold: {{ div .startupSeconds 10 | max 3 }}
readinessProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
livenessProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 6
{{- end -}}

{{- define "searchrl.ports" -}}
ports:
  - name: grpc
    containerPort: {{ .port }}
    protocol: TCP
  - name: metrics
    containerPort: {{ .metricsPort }}
    protocol: TCP
  - name: health
    containerPort: {{ .healthPort }}
    protocol: TCP
{{- if .httpPort }}
  - name: http
    containerPort: {{ .httpPort }}
    protocol: TCP
{{- end }}
{{- end -}}

{{/* Writable places of a searchrl container under readOnlyRootFilesystem: HOME (caches of HF, vLLM, triton) and
/tmp; plus, with tls.existingSecret, the TLS files (config security.tls_* point there). */}}
{{- define "searchrl.writableMounts" -}}
- {name: home, mountPath: /home/searchrl}
- {name: tmp, mountPath: /tmp}
{{- if .Values.tls.existingSecret }}
- {name: tls, mountPath: /etc/searchrl-tls, readOnly: true}
{{- end }}
{{- end -}}

{{- define "searchrl.writableVolumes" -}}
- {name: home, emptyDir: {}}
- {name: tmp, emptyDir: {}}
{{- if .Values.tls.existingSecret }}
- name: tls
  secret:
    secretName: {{ .Values.tls.existingSecret }}
{{- end }}
{{- end -}}

{{/* resources with nvidia.com/gpu added to requests and limits when gpus > 0 */}}
{{- define "searchrl.resources" -}}
{{- $res := deepCopy (default (dict) .resources) -}}
{{- if gt (int .gpus) 0 -}}
{{- $limits := default (dict) $res.limits -}}
{{- $_ := set $limits "nvidia.com/gpu" (int .gpus) -}}
{{- $_ := set $res "limits" $limits -}}
{{- $requests := default (dict) $res.requests -}}
{{- $_ := set $requests "nvidia.com/gpu" (int .gpus) -}}
{{- $_ := set $res "requests" $requests -}}
{{- end -}}
resources:
  {{- toYaml $res | nindent 2 }}
{{- end -}}

{{- define "searchrl.podCommon" -}}
automountServiceAccountToken: false # no searchrl pod talks to the Kubernetes API
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .svc.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .svc.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .svc.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A NetworkPolicy peer: the pods of one component of this release. */}}
{{- define "searchrl.peer" -}}
- podSelector:
    matchLabels:
      {{- include "searchrl.selectorLabels" . | nindent 6 }}
{{- end -}}
