{{/* Names and labels. */}}
{{- define "relaycord.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "relaycord.fullname" -}}
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

{{- define "relaycord.selectorLabels" -}}
app.kubernetes.io/name: {{ include "relaycord.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "relaycord.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "relaycord.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels of one component: (dict "root" $ "component" "ingest" "sink" "name"). */}}
{{- define "relaycord.componentSelector" -}}
{{ include "relaycord.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- with .sink }}
relaycord.dev/sink: {{ . }}
{{- end }}
{{- end -}}

{{- define "relaycord.componentLabels" -}}
{{ include "relaycord.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- with .sink }}
relaycord.dev/sink: {{ . }}
{{- end }}
{{- end -}}

{{- define "relaycord.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "relaycord.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "relaycord.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
TOML. Helm's own toToml writes every number as a float (256.0), which Relaycord rejects
for integer keys, so the config is written here: sections as tables, [[sinks]] as an
array of tables, anything nested inline. Strings are JSON-quoted, which is valid TOML.
*/}}
{{- define "relaycord.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "relaycord.toml.value" -}}
{{- $kind := kindOf . -}}
{{- if eq $kind "string" -}}{{ toJson . }}
{{- else if eq $kind "bool" -}}{{ . }}
{{- else if or (eq $kind "float64") (eq $kind "float32") -}}
{{- if eq (floor .) (float64 .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else if or (hasPrefix "int" $kind) (hasPrefix "uint" $kind) -}}{{ . }}
{{- else if eq $kind "slice" -}}
[{{- range $i, $v := . -}}{{- if $i -}}, {{ end -}}{{ include "relaycord.toml.value" $v }}{{- end -}}]
{{- else if eq $kind "map" -}}
{{- $map := . -}}
{ {{- range $i, $key := keys $map | sortAlpha -}}{{- if $i -}}, {{ end -}}{{ include "relaycord.toml.key" $key }} = {{ include "relaycord.toml.value" (get $map $key) }}{{- end -}} }
{{- else -}}{{ fail (printf "config: cannot write a %s value as TOML (null values are not allowed)" $kind) }}
{{- end -}}
{{- end -}}

{{/* The body of a table: one `key = value` line per non-null key. */}}
{{- define "relaycord.toml.table" -}}
{{- $map := . -}}
{{- range $key := keys $map | sortAlpha }}
{{- $value := get $map $key }}
{{- if ne (kindOf $value) "invalid" }}
{{ include "relaycord.toml.key" $key }} = {{ include "relaycord.toml.value" $value }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A whole file: (dict "config" MAP "sinks" LIST). */}}
{{- define "relaycord.toml" -}}
# Rendered by the relaycord Helm chart from its values; secrets come from the environment.
{{- $config := .config -}}
{{- range $section := keys $config | sortAlpha }}
{{- $body := get $config $section }}
{{- if ne (kindOf $body) "map" }}
{{- fail (printf "config.%s must be a table (a map)" $section) }}
{{- end }}

[{{ include "relaycord.toml.key" $section }}]
{{- include "relaycord.toml.table" $body }}
{{- end }}
{{- range $sink := .sinks }}

[[sinks]]
{{- include "relaycord.toml.table" $sink }}
{{- end }}
{{- end -}}

{{/*
The [nats], [ingest] and [interactions] keys the chart owns (listen addresses that the
probes and Services use, the NATS URL, paths of the files it mounts), laid over config.
*/}}
{{- define "relaycord.config" -}}
{{- $nats := dict "url" .Values.nats.url "tls_required" .Values.nats.tls.required -}}
{{- with .Values.nats.auth.user }}{{ $_ := set $nats "user" . }}{{ end -}}
{{- if .Values.nats.auth.creds.key }}{{ $_ := set $nats "creds_file" "/etc/relaycord/nats-creds/nats.creds" }}{{ end -}}
{{- if .Values.nats.tls.secretName -}}
{{- with .Values.nats.tls.caKey }}{{ $_ := set $nats "tls_ca_file" (printf "/etc/relaycord/nats-tls/%s" .) }}{{ end -}}
{{- if .Values.nats.tls.certKey -}}
{{- $_ := set $nats "tls_cert_file" (printf "/etc/relaycord/nats-tls/%s" .Values.nats.tls.certKey) -}}
{{- $_ := set $nats "tls_key_file" (printf "/etc/relaycord/nats-tls/%s" (required "nats.tls.keyKey is needed with nats.tls.certKey" .Values.nats.tls.keyKey)) -}}
{{- end -}}
{{- end -}}
{{- $managed := dict
  "nats" $nats
  "ingest" (dict "metrics_listen" (printf "0.0.0.0:%d" (int .Values.ingest.metricsPort)))
  "interactions" (dict
    "listen" (printf "0.0.0.0:%d" (int .Values.interactions.port))
    "metrics_listen" (printf "0.0.0.0:%d" (int .Values.interactions.metricsPort)))
-}}
{{- toJson (mustMergeOverwrite (dict "discord" (dict)) (deepCopy .Values.config) $managed) -}}
{{- end -}}

{{/* One sink's [[sinks]] table: name and type over its config. */}}
{{- define "relaycord.sinkTable" -}}
{{- toJson (mustMergeOverwrite (deepCopy (default (dict) .config)) (dict "name" .name "type" .type)) -}}
{{- end -}}

{{/*
A name of the release's own, at most 63 characters (a Service's name is a DNS-1035 label):
(dict "root" $ "suffix" "-ingest-metrics"), optionally "max" (default 63). The full name is cut before the suffix, so the
suffix, which tells the objects apart, always survives.
*/}}
{{- define "relaycord.componentName" -}}
{{- $room := sub (default 63 .max) (len .suffix) | int -}}
{{- printf "%s%s" (include "relaycord.fullname" .root | trunc $room | trimSuffix "-") .suffix -}}
{{- end -}}

{{/*
A sink's Deployment (and HPA, ScaledObject, PDB): <fullname>-sink-<name>, cut so that its
metrics Service, the same name plus "-metrics", fits in 63 characters. The sink's name is
kept whole (at most 40 characters, values.schema.json): only the release's part is cut.
*/}}
{{- define "relaycord.sinkFullname" -}}
{{- include "relaycord.componentName" (dict "root" .root "suffix" (printf "-sink-%s" .sink.name) "max" 55) -}}
{{- end -}}

{{- define "relaycord.secretName" -}}
{{- include "relaycord.fullname" . -}}
{{- end -}}

{{/*
One environment variable from a Secret: (dict "root" $ "env" NAME "ref" {name, key} "what" KEY).
An empty ref.name is the chart's own Secret, which must then hold the key.
*/}}
{{- define "relaycord.secretEnv" -}}
{{- $ref := .ref -}}
{{- if not $ref.key -}}
{{- fail (printf "%s: a Secret reference needs a key ({name: SECRET, key: KEY})" .what) -}}
{{- end -}}
{{- $name := $ref.name -}}
{{- if not $name -}}
{{- if not .root.Values.secret.create -}}
{{- fail (printf "%s: name an existing Secret, or set secret.create=true and secret.data.%s" .what $ref.key) -}}
{{- end -}}
{{- if not (hasKey .root.Values.secret.data $ref.key) -}}
{{- fail (printf "%s: secret.data has no key %q" .what $ref.key) -}}
{{- end -}}
{{- $name = include "relaycord.secretName" .root -}}
{{- end -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ $ref.key }}
{{- end -}}

{{/* NATS credentials as environment (token, password, nkey seed). */}}
{{- define "relaycord.natsEnv" -}}
{{- $auth := .Values.nats.auth -}}
{{- if $auth.password.key }}
{{- include "relaycord.secretEnv" (dict "root" . "env" "RELAYCORD_NATS__PASSWORD" "ref" $auth.password "what" "nats.auth.password") | nindent 0 }}
{{- end }}
{{- if $auth.token.key }}
{{- include "relaycord.secretEnv" (dict "root" . "env" "RELAYCORD_NATS__TOKEN" "ref" $auth.token "what" "nats.auth.token") | nindent 0 }}
{{- end }}
{{- if $auth.nkeySeed.key }}
{{- include "relaycord.secretEnv" (dict "root" . "env" "RELAYCORD_NATS__NKEY_SEED" "ref" $auth.nkeySeed "what" "nats.auth.nkeySeed") | nindent 0 }}
{{- end }}
{{- end -}}

{{/* Environment every container gets. */}}
{{- define "relaycord.commonEnv" -}}
- name: RELAYCORD_CONFIG
  value: /etc/relaycord/relaycord.toml
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- include "relaycord.natsEnv" . }}
{{- with .Values.tracing }}
{{- if .endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .endpoint | quote }}
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .sampleRatio | toString | quote }}
{{- $attributes := list (printf "k8s.namespace.name=%s" $.Release.Namespace) }}
{{- range $key, $value := .resourceAttributes }}
{{- $attributes = append $attributes (printf "%s=%s" $key $value) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attributes | quote }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volumes every pod gets: its config file, NATS creds/TLS, a small /tmp. */}}
{{- define "relaycord.volumes" -}}
- name: config
  configMap:
    name: {{ include "relaycord.fullname" .root }}
    items:
      - key: {{ .configKey }}
        path: relaycord.toml
- name: tmp
  emptyDir:
    sizeLimit: 16Mi
{{- with .root.Values.nats.auth.creds }}
{{- if .key }}
- name: nats-creds
  secret:
    secretName: {{ required "nats.auth.creds.name: the Secret holding the .creds file" .name }}
    items:
      - key: {{ .key }}
        path: nats.creds
{{- end }}
{{- end }}
{{- with .root.Values.nats.tls.secretName }}
- name: nats-tls
  secret:
    secretName: {{ . }}
{{- end }}
{{- end -}}

{{- define "relaycord.volumeMounts" -}}
- name: config
  mountPath: /etc/relaycord/relaycord.toml
  subPath: relaycord.toml
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.nats.auth.creds.key }}
- name: nats-creds
  mountPath: /etc/relaycord/nats-creds
  readOnly: true
{{- end }}
{{- if .Values.nats.tls.secretName }}
- name: nats-tls
  mountPath: /etc/relaycord/nats-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/*
Pod-level settings shared by every Deployment:
(dict "root" $ "role" ROLE-VALUES "component" (dict "root" $ "component" C "sink" NAME)).
*/}}
{{- define "relaycord.podSpecCommon" -}}
{{- $root := .root -}}
serviceAccountName: {{ include "relaycord.serviceAccountName" $root }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $root.Values.nodeSelector .role.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $root.Values.tolerations .role.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $root.Values.affinity .role.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- include "relaycord.topologySpread" . }}
{{- end -}}

{{/*
Spreading a role's replicas: its own topologySpreadConstraints when set, else one soft
constraint (ScheduleAnyway) per key of topologySpread.topologyKeys. matchLabelKeys keeps a
rollout's new ReplicaSet from being counted with the old one.
*/}}
{{- define "relaycord.topologySpread" -}}
{{- $role := .role -}}
{{- $component := .component -}}
{{- if $role.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml $role.topologySpreadConstraints | nindent 2 }}
{{- else if and $role.topologySpread $role.topologySpread.enabled }}
topologySpreadConstraints:
{{- range $key := $role.topologySpread.topologyKeys }}
  - maxSkew: {{ $role.topologySpread.maxSkew }}
    topologyKey: {{ $key }}
    whenUnsatisfiable: {{ $role.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "relaycord.componentSelector" $component | nindent 8 }}
    matchLabelKeys:
      - pod-template-hash
{{- end }}
{{- end }}
{{- end -}}

{{/*
The probes of every container, on its metrics port. The startup probe holds the liveness
probe back until the process first answers, so a slow start is not a restart loop.
*/}}
{{- define "relaycord.probes" -}}
{{- $probes := .Values.probes -}}
startupProbe:
  httpGet:
    path: /healthz
    port: metrics
  {{- toYaml $probes.startup | nindent 2 }}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  {{- toYaml $probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  {{- toYaml $probes.readiness | nindent 2 }}
{{- end -}}

{{/*
One role's config file as its pods read it: (dict "root" $ "role" "ingest" | "interactions")
or (dict "root" $ "role" "sink" "sink" ENTRY). Each holds only what its role reads: ingest
no [interactions], interactions no [ingest], a sink neither and only its own [[sinks]]
entry. So a pod's config checksum changes only with its own role's settings.
*/}}
{{- define "relaycord.configFile" -}}
{{- $config := include "relaycord.config" .root | fromJson -}}
{{- $drop := get (dict "ingest" (list "interactions") "interactions" (list "ingest") "sink" (list "ingest" "interactions")) .role -}}
{{- if not $drop }}{{ fail (printf "relaycord.configFile: unknown role %v" .role) }}{{ end -}}
{{- range $drop }}{{ $_ := unset $config . }}{{ end -}}
{{- $sinks := list -}}
{{- with .sink }}{{ $sinks = list (include "relaycord.sinkTable" . | fromJson) }}{{ end -}}
{{- include "relaycord.toml" (dict "config" $config "sinks" $sinks) -}}
{{- end -}}

{{/*
The checksum of the chart's own Secret, over only the keys the role reads from it
(references with an empty name): (dict "root" $ "refs" LIST-OF-REFS).
*/}}
{{- define "relaycord.secretChecksum" -}}
{{- $data := .root.Values.secret.data -}}
{{- $parts := list -}}
{{- range $ref := .refs -}}
{{- if and $ref $ref.key (not $ref.name) -}}
{{- $parts = append $parts (printf "%s=%v" $ref.key (get $data $ref.key)) -}}
{{- end -}}
{{- end -}}
{{- $parts | uniq | sortAlpha | join "\n" | sha256sum -}}
{{- end -}}

{{/*
A pod's annotations: (dict "root" $ "config" FILE-TEXT "refs" SECRET-REFS "extra" MAP).
The checksums cover only this role's own config file and Secret keys, so editing one
sink rolls that sink's pods and no others.
*/}}
{{- define "relaycord.podAnnotations" -}}
checksum/config: {{ .config | sha256sum }}
{{- if .root.Values.secret.create }}
checksum/secret: {{ include "relaycord.secretChecksum" . }}
{{- end }}
{{- with .root.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The NATS credentials every role reads (Secret references). */}}
{{- define "relaycord.natsSecretRefs" -}}
{{- $auth := .Values.nats.auth -}}
{{- toJson (list $auth.password $auth.token $auth.nkeySeed) -}}
{{- end -}}

{{/*
A PodDisruptionBudget: (dict "component" COMPONENT "name" NAME "pdb" ROLE.pdb).
unhealthyPodEvictionPolicy AlwaysAllow: during a Discord or NATS outage every pod is
unready, and a node drain must still be able to evict them.
*/}}
{{- define "relaycord.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  labels:
    {{- include "relaycord.componentLabels" .component | nindent 4 }}
spec:
  maxUnavailable: {{ .pdb.maxUnavailable }}
  unhealthyPodEvictionPolicy: {{ .pdb.unhealthyPodEvictionPolicy | default "AlwaysAllow" }}
  selector:
    matchLabels:
      {{- include "relaycord.componentSelector" .component | nindent 6 }}
{{- end -}}

{{/*
Whole seconds (rounded up) of a duration as relaycord reads it (humantime: "5s", "500ms",
"1m 30s", "2min"): (dict "value" VALUE "key" KEY). Fails naming KEY for what it cannot
read; relaycord itself accepts days and longer too, which no grace period here would need.
*/}}
{{- define "relaycord.durationSeconds" -}}
{{- $ns := dict "nanos" 1 "nsec" 1 "ns" 1 "usec" 1000 "us" 1000
  "millis" 1000000 "msec" 1000000 "ms" 1000000
  "seconds" 1000000000 "second" 1000000000 "secs" 1000000000 "sec" 1000000000 "s" 1000000000
  "minutes" 60000000000 "minute" 60000000000 "min" 60000000000 "mins" 60000000000 "m" 60000000000
  "hours" 3600000000000 "hour" 3600000000000 "hr" 3600000000000 "hrs" 3600000000000 "h" 3600000000000 -}}
{{- $text := toString .value -}}
{{- $terms := regexFindAll "[0-9]+[ ]*[a-z]+" $text -1 -}}
{{- if or (not $terms) (regexReplaceAll "[0-9]+[ ]*[a-z]+" $text "" | trim) -}}
{{- fail (printf "%s = %q: write a duration such as \"5s\", \"500ms\" or \"1m 30s\"" .key $text) -}}
{{- end -}}
{{- $total := 0 -}}
{{- range $terms -}}
{{- $unit := regexReplaceAll "^[0-9]+[ ]*" . "" -}}
{{- if not (hasKey $ns $unit) -}}
{{- fail (printf "%s = %q: use ns, us, ms, s, m or h" $.key $text) -}}
{{- end -}}
{{- $total = add $total (mul (regexFind "^[0-9]+" . | atoi) (get $ns $unit)) -}}
{{- end -}}
{{- div (add $total 999999999) 1000000000 -}}
{{- end -}}

{{/*
The interactions pod's termination grace period, refused when it does not cover the drain:
on SIGTERM the endpoint serves on for config.interactions.drain_delay (5 s by default), then
requests in flight and late calls get shutdown_grace (10 s), then the late calls' replies
are stored (3 s at most) and the process exits; 5 s cover those last steps. Past the grace
period Kubernetes kills the pod, requests in flight included. Defaults: the binary's
(crates/interactions/src/serve.rs, ServeLimits).
*/}}
{{- define "relaycord.interactionsGrace" -}}
{{- $section := dig "interactions" (dict) (.Values.config | default dict) -}}
{{- $drain := include "relaycord.durationSeconds" (dict "value" (dig "drain_delay" "5s" $section) "key" "config.interactions.drain_delay") | int -}}
{{- $grace := include "relaycord.durationSeconds" (dict "value" (dig "shutdown_grace" "10s" $section) "key" "config.interactions.shutdown_grace") | int -}}
{{- $needed := add $drain $grace 5 -}}
{{- $set := .Values.interactions.terminationGracePeriodSeconds | int -}}
{{- if lt $set $needed -}}
{{- fail (printf "interactions.terminationGracePeriodSeconds = %d is too short: the drain on SIGTERM takes config.interactions.drain_delay (%ds) + shutdown_grace (%ds) + 5s to store late replies and exit; set it to at least %d, or shorten those" $set $drain $grace $needed) -}}
{{- end -}}
{{- $set -}}
{{- end -}}
