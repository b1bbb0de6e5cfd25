{{/* Chart name. */}}
{{- define "dragonfly.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix: RELEASE-CHART, or RELEASE when it already holds the chart name. Kept to
42 characters so NAME-scheduler-N and NAME-seed-peer-N stay valid DNS labels. */}}
{{- define "dragonfly.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 42 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dragonfly.scheduler.fullname" -}}{{ include "dragonfly.fullname" . }}-scheduler{{- end }}
{{- define "dragonfly.seedPeer.fullname" -}}{{ include "dragonfly.fullname" . }}-seed-peer{{- end }}
{{- define "dragonfly.dfdaemon.fullname" -}}{{ include "dragonfly.fullname" . }}-dfdaemon{{- end }}
{{- define "dragonfly.restore.fullname" -}}{{ include "dragonfly.fullname" . }}-containerd-restore{{- end }}

{{/* Labels on every object. */}}
{{- define "dragonfly.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "dragonfly.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "dragonfly.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dragonfly.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Image reference: REGISTRY/REPOSITORY:TAG. Argument: dict with "image" (registry, repository,
tag) and "default" (the tag to use when tag is empty). */}}
{{- define "dragonfly.imageRef" -}}
{{- $tag := .image.tag | default .default | toString -}}
{{- if .image.registry -}}
{{ .image.registry }}/{{ .image.repository }}:{{ $tag }}
{{- else -}}
{{ .image.repository }}:{{ $tag }}
{{- end -}}
{{- end }}

{{- define "dragonfly.image" -}}
{{ include "dragonfly.imageRef" (dict "image" .Values.image "default" .Chart.AppVersion) }}
{{- end }}

{{- define "dragonfly.pullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* The schedulers' addresses: one per replica, through the headless Service's per-pod DNS
names, so a daemon's hash ring has every replica whether or not it is up yet. */}}
{{- define "dragonfly.scheduler.netAddrs" -}}
{{- $addrs := list -}}
{{- if .Values.scheduler.enabled -}}
{{- $name := include "dragonfly.scheduler.fullname" . -}}
{{- range $i := until (int .Values.scheduler.replicas) -}}
{{- $addrs = append $addrs (printf "%s-%d.%s.%s.svc.%s:%d" $name $i $name $.Release.Namespace $.Values.clusterDomain (int $.Values.scheduler.config.server.port)) -}}
{{- end -}}
{{- end -}}
{{- toJson $addrs -}}
{{- end }}

{{/* A daemon config (seed peer or node daemon) with the chart's part filled in. Argument: dict
with "root" (the chart context), "config" (the values' config) and "seed" (bool). */}}
{{- define "dragonfly.daemonConfig" -}}
{{- $cfg := deepCopy .config -}}
{{- $sched := get $cfg "scheduler" | default dict -}}
{{- if not $sched.netAddrs -}}
{{- $_ := set $sched "netAddrs" (include "dragonfly.scheduler.netAddrs" .root | fromJsonArray) -}}
{{- end -}}
{{- $_ := set $cfg "scheduler" $sched -}}
{{- if .seed -}}
{{- $seedPeer := get $cfg "seedPeer" | default dict -}}
{{- $_ := set $seedPeer "enable" true -}}
{{- $_ := set $cfg "seedPeer" $seedPeer -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end }}

{{/* The scheduler config with seedPeer.enable following seedPeer.enabled unless set. */}}
{{- define "dragonfly.schedulerConfig" -}}
{{- $cfg := deepCopy .Values.scheduler.config -}}
{{- $seedPeer := get $cfg "seedPeer" | default dict -}}
{{- if not (hasKey $seedPeer "enable") -}}
{{- $_ := set $seedPeer "enable" .Values.seedPeer.enabled -}}
{{- end -}}
{{- $_ := set $cfg "seedPeer" $seedPeer -}}
{{- toYaml $cfg -}}
{{- end }}

{{/* The scheduler's metrics port, from metrics.addr (":8003" or "host:8003"). */}}
{{- define "dragonfly.scheduler.metricsPort" -}}
{{- $addr := .Values.scheduler.config.metrics.addr | toString -}}
{{- $parts := splitList ":" $addr -}}
{{- $port := last $parts -}}
{{- if not (regexMatch "^[0-9]+$" $port) -}}
{{- fail (printf "scheduler.config.metrics.addr: %q has no port (write :8003 or HOST:8003)" $addr) -}}
{{- end -}}
{{- $port -}}
{{- end }}

{{/* Probes of a daemon container: HTTP /healthy on the metrics port when metrics are on, the
gRPC health service on the upload port otherwise. Argument: dict with "config" and "probes". */}}
{{- define "dragonfly.daemonProbes" -}}
{{- $metricsOn := .config.metrics.enable -}}
{{- range $kind := list "startup" "readiness" "liveness" }}
{{ $kind }}Probe:
  {{- if $metricsOn }}
  httpGet:
    path: /healthy
    port: metrics
  {{- else }}
  grpc:
    port: {{ $.config.upload.tcpListen.port }}
  {{- end }}
  periodSeconds: {{ (get $.probes $kind).periodSeconds }}
  failureThreshold: {{ (get $.probes $kind).failureThreshold }}
  timeoutSeconds: 5
{{- end }}
{{- end }}

{{/* Security context of a container that needs no privilege. */}}
{{- define "dragonfly.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* containerd-hosts init container arguments shared by the install and the restore. */}}
{{- define "dragonfly.onChange" -}}
{{- if .Values.dfdaemon.containerd.restart.enabled }}
- --on-change
- {{ .Values.dfdaemon.containerd.restart.command | quote }}
{{- end }}
{{- end }}

{{/* Host directories the node configuration reads and writes, mounted at the same paths so
that a config_path found in config.toml means the same directory inside the container. */}}
{{- define "dragonfly.containerdMounts" -}}
- name: containerd-config-dir
  mountPath: {{ dir .Values.dfdaemon.containerd.configFile }}
{{- if not (hasPrefix (printf "%s/" (dir .Values.dfdaemon.containerd.configFile)) .Values.dfdaemon.containerd.certsDir) }}
- name: containerd-certs-dir
  mountPath: {{ .Values.dfdaemon.containerd.certsDir }}
{{- end }}
- name: containerd-backup
  mountPath: {{ .Values.dfdaemon.containerd.backupDir }}
{{- end }}

{{- define "dragonfly.containerdVolumes" -}}
- name: containerd-config-dir
  hostPath:
    path: {{ dir .Values.dfdaemon.containerd.configFile }}
    type: DirectoryOrCreate
{{- if not (hasPrefix (printf "%s/" (dir .Values.dfdaemon.containerd.configFile)) .Values.dfdaemon.containerd.certsDir) }}
- name: containerd-certs-dir
  hostPath:
    path: {{ .Values.dfdaemon.containerd.certsDir }}
    type: DirectoryOrCreate
{{- end }}
- name: containerd-backup
  hostPath:
    path: {{ .Values.dfdaemon.containerd.backupDir }}
    type: DirectoryOrCreate
{{- end }}

{{/* Security context of the node configuration containers: root (the files are root's), and
privileged only when they may restart containerd through nsenter into PID 1. */}}
{{- define "dragonfly.nodeConfigSecurity" -}}
{{- if .Values.dfdaemon.containerd.restart.enabled }}
privileged: true
runAsUser: 0
runAsNonRoot: false
readOnlyRootFilesystem: true
{{- else }}
runAsUser: 0
runAsNonRoot: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}
{{- end }}
