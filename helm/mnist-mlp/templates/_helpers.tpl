{{/*
Chart name, truncated to 63 characters (a DNS label).
*/}}
{{- define "mnist-mlp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name when it already contains the chart name.
*/}}
{{- define "mnist-mlp.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "mnist-mlp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels shared by every component (add app.kubernetes.io/component to tell them apart).
*/}}
{{- define "mnist-mlp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mnist-mlp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels, without the component.
*/}}
{{- define "mnist-mlp.labels" -}}
helm.sh/chart: {{ include "mnist-mlp.chart" . }}
{{ include "mnist-mlp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "mnist-mlp.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of the inference service pods (Deployment, Service, PDB, NetworkPolicy).
*/}}
{{- define "mnist-mlp.server.selectorLabels" -}}
{{ include "mnist-mlp.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/*
Labels of the inference service resources.
*/}}
{{- define "mnist-mlp.server.labels" -}}
{{ include "mnist-mlp.labels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/*
Selector labels and labels of the trainer resources.
*/}}
{{- define "mnist-mlp.trainer.selectorLabels" -}}
{{ include "mnist-mlp.selectorLabels" . }}
app.kubernetes.io/component: trainer
{{- end }}

{{- define "mnist-mlp.trainer.labels" -}}
{{ include "mnist-mlp.labels" . }}
app.kubernetes.io/component: trainer
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "mnist-mlp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mnist-mlp.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Images: <repository>:<tag>, the tag defaulting to the chart's appVersion.
*/}}
{{- define "mnist-mlp.server.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "mnist-mlp.trainer.image" -}}
{{- printf "%s:%s" .Values.training.image.repository (.Values.training.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Name of the models PersistentVolumeClaim.
*/}}
{{- define "mnist-mlp.models.claimName" -}}
{{- if .Values.models.existingClaim }}
{{- .Values.models.existingClaim }}
{{- else }}
{{- printf "%s-models" (include "mnist-mlp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
The models repository, as each pod sees it: by default the PersistentVolumeClaim mounted at
/models (read-only in the service pods, read-write in the trainer's); with models.uri
(s3://bucket/prefix) a bucket that the service and `mnist-train` reach themselves through boto3,
so no pod mounts a models volume and MODEL_DIR is the URI. The claim would only tie the pods to
the nodes where it can attach, and hold nothing.

The bucket's settings are the standard AWS variables that boto3's default chain reads, from one
helper for every pod, so the service and the trainer never disagree on where the models are:
  - models.s3.endpoint -> AWS_ENDPOINT_URL_S3 (MinIO, Ceph, GCS; empty: AWS);
  - models.s3.region -> AWS_REGION and AWS_DEFAULT_REGION: boto3 reads the latter, most other
    AWS SDKs and tools the former;
  - models.s3.existingSecret -> envFrom, so that AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    AWS_SESSION_TOKEN come from whichever of them the Secret holds. Empty: the ServiceAccount's
    identity (serviceAccount.annotations, e.g. IRSA's eks.amazonaws.com/role-arn). A variable in
    env wins over the same one from envFrom, so extraEnv still overrides any of them.
The service pods also get an emptyDir for the versions they download (MODEL_CACHE_DIR, sized by
models.cacheSizeLimit): the root filesystem is read-only, and /tmp (server.tmpSizeLimit) is sized
for temporary files, not for models.

An s3:// payloadLog.url puts the payload logs in a bucket of the same store: the service pods then
get the store's settings (and its egress) even with the models on a volume. There is one store, not
one per bucket, because the process has one set of AWS_* variables for both.

Each helper renders list items (or, for envFrom, the whole field), nothing when it has nothing to
add. Call each with (dict "root" $ "server" BOOL): server is true for the service pods.
*/}}
{{- define "mnist-mlp.objectStore.used" -}}
{{- if or .root.Values.models.uri (and .server (hasPrefix "s3://" .root.Values.payloadLog.url)) }}true{{ end }}
{{- end }}

{{- define "mnist-mlp.models.env" -}}
{{- $m := .root.Values.models -}}
- name: MODEL_DIR
  value: {{ if $m.uri }}{{ $m.uri | quote }}{{ else }}/models{{ end }}
{{- if and $m.uri .server }}
- name: MODEL_CACHE_DIR
  value: /var/cache/mnist-models
{{- end }}
{{- if include "mnist-mlp.objectStore.used" . }}
{{- with $m.s3.endpoint }}
- name: AWS_ENDPOINT_URL_S3
  value: {{ . | quote }}
{{- end }}
{{- with $m.s3.region }}
- name: AWS_REGION
  value: {{ . | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mnist-mlp.models.envFrom" -}}
{{- $m := .root.Values.models -}}
{{- if and (include "mnist-mlp.objectStore.used" .) $m.s3.existingSecret -}}
envFrom:
  - secretRef:
      name: {{ $m.s3.existingSecret }}
{{- end }}
{{- end }}

{{- define "mnist-mlp.models.volumeMount" -}}
{{- if .root.Values.models.uri }}
{{- if .server -}}
- name: model-cache
  mountPath: /var/cache/mnist-models
{{- end }}
{{- else -}}
- name: models
  mountPath: /models
  {{- if .server }}
  readOnly: true
  {{- end }}
{{- end }}
{{- end }}

{{- define "mnist-mlp.models.volume" -}}
{{- $m := .root.Values.models -}}
{{- if $m.uri }}
{{- if .server -}}
- name: model-cache
  emptyDir:
    sizeLimit: {{ $m.cacheSizeLimit }}
{{- end }}
{{- else -}}
- name: models
  persistentVolumeClaim:
    claimName: {{ include "mnist-mlp.models.claimName" .root }}
    {{- if .server }}
    readOnly: true
    {{- end }}
{{- end }}
{{- end }}

{{/*
NetworkPolicy egress rules shared by the policies below: DNS (every pod resolves names), and,
with models.uri (for the service pods also with an s3:// payloadLog.url), the object store. The
store's rule opens networkPolicy.models.ports plus the port of models.s3.endpoint (explicit, else
80 for http and 443 for https), so that an endpoint such as http://minio.minio.svc:9000 works
without a second setting. Its peers are networkPolicy.models.cidrs and the pods of
networkPolicy.models.namespaces: an in-cluster store (MinIO, Ceph RGW) is reached at pod IPs,
which many CNIs never match with an ipBlock. Both empty: any destination on those ports.
Call modelsEgress with (dict "root" $ "server" BOOL), as the models helpers above.

An http(s):// payloadLog.url gets a rule of its own (payloadLogEgress, service pods only): the
URL's port plus networkPolicy.payloadLog.ports, to networkPolicy.payloadLog.to (any peer when
empty). Extra ports are there because a policy sees the port after a Service's translation: a
sink such as a Knative Broker is reached at port 80 of its Service but 8080 of its pods.
*/}}
{{- define "mnist-mlp.urlPort" -}}
{{- $u := urlParse . }}
{{- regexFind ":[0-9]+$" $u.host | trimPrefix ":" | default (ternary "80" "443" (eq $u.scheme "http")) }}
{{- end }}

{{- define "mnist-mlp.networkPolicy.dnsEgress" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}

{{- define "mnist-mlp.networkPolicy.modelsEgress" -}}
{{- $m := .root.Values.models -}}
{{- $np := .root.Values.networkPolicy.models -}}
{{- if include "mnist-mlp.objectStore.used" . }}
{{- $ports := list }}
{{- range $np.ports }}
{{- $ports = append $ports (int .) }}
{{- end }}
{{- with $m.s3.endpoint }}
{{- $ports = append $ports (int (include "mnist-mlp.urlPort" .)) }}
{{- end }}
{{- $buckets := list }}
{{- with $m.uri }}
{{- $buckets = append $buckets (printf "the models bucket (%s)" .) }}
{{- end }}
{{- if and .server (hasPrefix "s3://" .root.Values.payloadLog.url) }}
{{- $buckets = append $buckets (printf "the payload logs' bucket (%s)" .root.Values.payloadLog.url) }}
{{- end -}}
# The object store{{ with $m.s3.endpoint }} at {{ . }}{{ end }}: {{ join " and " $buckets }}.
- ports:
    {{- range $ports | uniq }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- if or $np.cidrs $np.namespaces }}
  to:
    {{- range $np.cidrs }}
    - ipBlock:
        cidr: {{ . | quote }}
    {{- end }}
    {{- range $np.namespaces }}
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ . | quote }}
    {{- end }}
  {{- end }}
{{- end }}
{{- end }}

{{- define "mnist-mlp.networkPolicy.payloadLogEgress" -}}
{{- $url := .Values.payloadLog.url -}}
{{- $np := .Values.networkPolicy.payloadLog -}}
{{- if regexMatch "^https?://" $url }}
{{- $u := urlParse $url }}
{{- $ports := list (int (include "mnist-mlp.urlPort" $url)) }}
{{- range $np.ports }}
{{- $ports = append $ports (int .) }}
{{- end -}}
# The payload logs' CloudEvents sink ({{ $u.scheme }}://{{ $u.host }}).
- ports:
    {{- range $ports | uniq }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/*
API keys (auth.existingSecret): the Secret's key auth.secretKey mounted as the file
/etc/mnist-mlp/auth/api-keys, for the service pods and the `helm test` pod alike. Included only
when auth.existingSecret is set: the env entry, the volumeMount and the volume, each a list item.

A directory mount, never subPath: the kubelet updates a Secret volume in place (a new ..data
symlink, so a new inode, which the service notices within a second) only when it is mounted as
a directory; a subPath mount keeps the file of the pod's start for ever. No checksum annotation
on the pods either: a key rotation must not restart them.
*/}}
{{- define "mnist-mlp.auth.env" -}}
- name: API_KEYS_FILE
  value: /etc/mnist-mlp/auth/api-keys
{{- end }}

{{- define "mnist-mlp.auth.volumeMount" -}}
- name: api-keys
  mountPath: /etc/mnist-mlp/auth
  readOnly: true
{{- end }}

{{- define "mnist-mlp.auth.volume" -}}
- name: api-keys
  secret:
    secretName: {{ .Values.auth.existingSecret }}
    items:
      - key: {{ .Values.auth.secretKey | quote }}
        path: api-keys
    # Secret files belong to root. With podSecurityContext.fsGroup (10001 by default) the kubelet
    # gives them that group, which the containers (uid 10001) hold as a supplementary group: 0440
    # (read for root and the group, nothing for others) is enough. Without an fsGroup they stay
    # root:root and uid 10001 reads them only as "others": 0444.
    defaultMode: {{ if .Values.podSecurityContext.fsGroup }}0440{{ else }}0444{{ end }}
{{- end }}

{{/*
The action of a service pod's probe: GET `path` on the http port, or with grpc.probes.enabled the
gRPC health service named `service` (liveness, readiness). Kubernetes' grpc probe takes a port
number only, not a port's name. Call with (dict "root" $ "path" PATH "service" NAME).
*/}}
{{- define "mnist-mlp.server.probe" -}}
{{- if .root.Values.grpc.probes.enabled -}}
grpc:
  port: {{ .root.Values.grpc.port }}
  service: {{ .service }}
{{- else -}}
httpGet:
  path: {{ .path }}
  port: http
{{- end }}
{{- end }}

{{/*
Number of service pods expected at rest (for the PodDisruptionBudget).
*/}}
{{- define "mnist-mlp.server.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}
{{- .Values.autoscaling.minReplicas }}
{{- else }}
{{- .Values.replicaCount }}
{{- end }}
{{- end }}

{{/*
Consistency checks the schema cannot express; included by the Deployment.
*/}}
{{- define "mnist-mlp.validate" -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must be <= autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.ingress.enabled (empty .Values.ingress.hosts) }}
{{- fail "ingress.enabled needs at least one entry in ingress.hosts" }}
{{- end }}
{{- $g := .Values.grpc }}
{{- if and $g.probes.enabled (not $g.enabled) }}
{{- fail "grpc.probes.enabled needs grpc.enabled: the probes ask the gRPC health service" }}
{{- end }}
{{- if and $g.enabled (eq (int $g.port) 8000) }}
{{- fail "grpc.port must not be 8000: that is the container's HTTP port" }}
{{- end }}
{{- if and $g.enabled (eq (int .Values.service.grpcPort) (int .Values.service.port)) }}
{{- fail (printf "service.grpcPort and service.port are both %d: give each its own port" (int .Values.service.port)) }}
{{- end }}
{{- if and .Values.models.uri .Values.models.existingClaim }}
{{- fail (printf "models.uri (%s) and models.existingClaim (%s) are two places for the models: set one of them" .Values.models.uri .Values.models.existingClaim) }}
{{- end }}
{{- $s := .Values.sweep }}
{{- if $s.enabled }}
{{- if semverCompare "<1.29.0-0" .Capabilities.KubeVersion.Version }}
{{- fail (printf "sweep.enabled needs Kubernetes >= 1.29 (the Indexed Job's backoffLimitPerIndex); this cluster is %s" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if and (not (kindIs "invalid" $s.maxFailedIndexes)) (gt (int $s.maxFailedIndexes) (int $s.trials)) }}
{{- fail "sweep.maxFailedIndexes must be <= sweep.trials" }}
{{- end }}
{{- if $s.promote.enabled }}
{{- $canary := eq $s.promote.label "canary" }}
{{- $percent := gt (float64 $s.promote.canaryPercent) 0.0 }}
{{- if and $canary (not $percent) }}
{{- fail "sweep.promote.label canary needs sweep.promote.canaryPercent (0 < P < 100): the share of traffic the canary takes" }}
{{- end }}
{{- if and $percent (not $canary) }}
{{- fail (printf "sweep.promote.canaryPercent is for sweep.promote.label canary only (label is %q)" $s.promote.label) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Labels of the promotion Job's pods (the sweep's last step): a component of their own, so that the
trainer NetworkPolicy (MNIST downloads) does not apply to them; they get a deny-all policy instead.
*/}}
{{- define "mnist-mlp.promote.selectorLabels" -}}
{{ include "mnist-mlp.selectorLabels" . }}
app.kubernetes.io/component: promote
{{- end }}

{{- define "mnist-mlp.promote.labels" -}}
{{ include "mnist-mlp.labels" . }}
app.kubernetes.io/component: promote
{{- end }}

{{/*
Sweep id: the same in every pod of one release revision, a new one on each upgrade.
*/}}
{{- define "mnist-mlp.sweep.id" -}}
{{- printf "%s-r%d" .Release.Name (int .Release.Revision) }}
{{- end }}

{{/*
Job-level settings shared by the trainer Jobs: deadline, TTL and a pod failure policy that stops
retrying on the exit codes no retry can fix (`exitCodes`, with `action` FailJob, or FailIndex for
an Indexed Job with backoffLimitPerIndex) and does not count evictions and preemptions.
Call with (dict "deadline" N "ttl" N|nil "container" NAME "exitCodes" LIST "action" ACTION "why" COMMENT).
*/}}
{{- define "mnist-mlp.trainer.jobPolicy" -}}
activeDeadlineSeconds: {{ .deadline }}
{{- if not (kindIs "invalid" .ttl) }}
ttlSecondsAfterFinished: {{ .ttl }}
{{- end }}
podFailurePolicy:
  rules:
    # {{ .why }}
    - action: {{ .action }}
      onExitCodes:
        containerName: {{ .container }}
        operator: In
        values: {{ toJson .exitCodes }}
    # Evictions and preemptions do not count against the backoff limit.
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
{{- end }}

{{/*
The training Job spec, shared by the hook Job and the CronJob's jobTemplate.
Call with (dict "root" $ "skipIfPublished" true|false).
*/}}
{{- define "mnist-mlp.trainer.jobSpec" -}}
{{- $root := .root -}}
{{- $t := $root.Values.training -}}
backoffLimit: {{ $t.backoffLimit }}
{{ include "mnist-mlp.trainer.jobPolicy" (dict "deadline" $t.activeDeadlineSeconds "ttl" $t.ttlSecondsAfterFinished "container" "train" "exitCodes" (list 2) "action" "FailJob" "why" "Exit code 2 is a usage error (bad flag or value): retrying cannot help.") }}
{{- $args := list "train" "--preset" $t.preset }}
{{- if .skipIfPublished }}
{{- $args = append $args "--skip-if-published" }}
{{- end }}
{{ include "mnist-mlp.trainer.podTemplate" (dict "root" $root "container" "train" "args" (concat $args $t.extraArgs) "resources" $t.resources "data" true) }}
{{- end }}

{{/*
Pod template of every pod running the trainer image (`mnist-train`): training, sweep trials and
promotion. They share the image, security contexts, the models repository (the volume
read-write at /models, or the bucket: mnist-mlp.models.*), /tmp (where the trainer also stages
its uploads to a bucket), the `training.*` pod metadata, scheduling and extraEnv. Call with (dict
  "root" $  "container" NAME  "args" LIST  "resources" MAP
  "data" BOOL          mount MNIST (training.data) and the download cache, set MNIST_* (false for promote)
  "labels" TEMPLATE    labels template name (default "mnist-mlp.trainer.labels")
  "env" LIST           extra EnvVars (optional)
  "volumes" LIST       extra volumes, each {name, mountPath, source: a VolumeSource map} (optional, read-only)).
*/}}
{{- define "mnist-mlp.trainer.podTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $t := $v.training -}}
{{- $data := .data -}}
template:
  metadata:
    labels:
      {{- include (.labels | default "mnist-mlp.trainer.labels") $root | nindent 6 }}
      {{- with $t.podLabels }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- with $t.podAnnotations }}
    annotations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  spec:
    restartPolicy: Never
    serviceAccountName: {{ include "mnist-mlp.serviceAccountName" $root }}
    automountServiceAccountToken: {{ $v.serviceAccount.automountServiceAccountToken }}
    enableServiceLinks: false
    terminationGracePeriodSeconds: {{ $t.terminationGracePeriodSeconds }}
    {{- with $v.imagePullSecrets }}
    imagePullSecrets:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $t.priorityClassName }}
    priorityClassName: {{ . }}
    {{- end }}
    securityContext:
      {{- toYaml $v.podSecurityContext | nindent 6 }}
    containers:
      - name: {{ .container }}
        image: {{ include "mnist-mlp.trainer.image" $root | quote }}
        imagePullPolicy: {{ $t.image.pullPolicy }}
        args:
          {{- range .args }}
          - {{ . | quote }}
          {{- end }}
        {{- with include "mnist-mlp.models.envFrom" (dict "root" $root "server" false) }}
        {{- . | nindent 8 }}
        {{- end }}
        env:
          {{- include "mnist-mlp.models.env" (dict "root" $root "server" false) | nindent 10 }}
          - name: MODEL_NAME
            value: {{ $v.model.name | quote }}
          {{- if $data }}
          - name: MNIST_CACHE_DIR
            value: /cache
          {{- if $t.data.existingClaim }}
          - name: MNIST_DIR
            value: /data/mnist
          {{- end }}
          {{- with $t.mirrors }}
          - name: MNIST_MIRRORS
            value: {{ join "," . | quote }}
          {{- end }}
          {{- end }}
          - name: LOG_FORMAT
            value: {{ $t.logFormat | quote }}
          - name: MPLCONFIGDIR
            value: /tmp/matplotlib
          {{- with .env }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
          {{- with $t.extraEnv }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        securityContext:
          {{- toYaml $v.securityContext | nindent 10 }}
        resources:
          {{- toYaml .resources | nindent 10 }}
        volumeMounts:
          {{- with include "mnist-mlp.models.volumeMount" (dict "root" $root "server" false) }}
          {{- . | nindent 10 }}
          {{- end }}
          {{- if $data }}
          - name: cache
            mountPath: /cache
          {{- end }}
          - name: tmp
            mountPath: /tmp
          {{- if and $data $t.data.existingClaim }}
          - name: data
            mountPath: /data/mnist
            readOnly: true
            {{- with $t.data.subPath }}
            subPath: {{ . | quote }}
            {{- end }}
          {{- end }}
          {{- range .volumes }}
          - name: {{ .name }}
            mountPath: {{ .mountPath }}
            readOnly: true
          {{- end }}
    volumes:
      {{- with include "mnist-mlp.models.volume" (dict "root" $root "server" false) }}
      {{- . | nindent 6 }}
      {{- end }}
      {{- if $data }}
      - name: cache
        {{- if $t.cache.existingClaim }}
        persistentVolumeClaim:
          claimName: {{ $t.cache.existingClaim }}
        {{- else }}
        emptyDir:
          sizeLimit: {{ $t.cache.sizeLimit }}
        {{- end }}
      {{- end }}
      - name: tmp
        emptyDir:
          sizeLimit: {{ $t.tmpSizeLimit }}
      {{- if and $data $t.data.existingClaim }}
      - name: data
        persistentVolumeClaim:
          claimName: {{ $t.data.existingClaim }}
          readOnly: true
      {{- end }}
      {{- range .volumes }}
      - name: {{ .name }}
        {{- toYaml .source | nindent 8 }}
      {{- end }}
    {{- with $t.nodeSelector }}
    nodeSelector:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $t.tolerations }}
    tolerations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $t.affinity }}
    affinity:
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end }}
