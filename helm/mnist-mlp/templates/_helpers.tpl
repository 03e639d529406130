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
{{- end }}

{{/*
The training Job spec, shared by the hook Job and the CronJob's jobTemplate.
Call with (dict "root" $ "skipIfPublished" true|false).
*/}}
{{- define "mnist-mlp.trainer.jobSpec" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $t := $v.training -}}
backoffLimit: {{ $t.backoffLimit }}
activeDeadlineSeconds: {{ $t.activeDeadlineSeconds }}
{{- if not (kindIs "invalid" $t.ttlSecondsAfterFinished) }}
ttlSecondsAfterFinished: {{ $t.ttlSecondsAfterFinished }}
{{- end }}
podFailurePolicy:
  rules:
    # Exit code 2 is a usage error (bad flag or value): retrying cannot help.
    - action: FailJob
      onExitCodes:
        containerName: train
        operator: In
        values: [2]
    # Evictions and preemptions do not count against backoffLimit.
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
template:
  metadata:
    labels:
      {{- include "mnist-mlp.trainer.labels" $root | nindent 6 }}
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
      - name: train
        image: {{ include "mnist-mlp.trainer.image" $root | quote }}
        imagePullPolicy: {{ $t.image.pullPolicy }}
        args:
          - train
          - --preset
          - {{ $t.preset | quote }}
          {{- if .skipIfPublished }}
          - --skip-if-published
          {{- end }}
          {{- range $t.extraArgs }}
          - {{ . | quote }}
          {{- end }}
        env:
          - name: MODEL_DIR
            value: /models
          - name: MODEL_NAME
            value: {{ $v.model.name | quote }}
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
          - name: LOG_FORMAT
            value: {{ $t.logFormat | quote }}
          - name: MPLCONFIGDIR
            value: /tmp/matplotlib
          {{- with $t.extraEnv }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        securityContext:
          {{- toYaml $v.securityContext | nindent 10 }}
        resources:
          {{- toYaml $t.resources | nindent 10 }}
        volumeMounts:
          - name: models
            mountPath: /models
          - name: cache
            mountPath: /cache
          - name: tmp
            mountPath: /tmp
          {{- if $t.data.existingClaim }}
          - name: data
            mountPath: /data/mnist
            readOnly: true
            {{- with $t.data.subPath }}
            subPath: {{ . | quote }}
            {{- end }}
          {{- end }}
    volumes:
      - name: models
        persistentVolumeClaim:
          claimName: {{ include "mnist-mlp.models.claimName" $root }}
      - name: cache
        {{- if $t.cache.existingClaim }}
        persistentVolumeClaim:
          claimName: {{ $t.cache.existingClaim }}
        {{- else }}
        emptyDir:
          sizeLimit: {{ $t.cache.sizeLimit }}
        {{- end }}
      - name: tmp
        emptyDir:
          sizeLimit: {{ $t.tmpSizeLimit }}
      {{- if $t.data.existingClaim }}
      - name: data
        persistentVolumeClaim:
          claimName: {{ $t.data.existingClaim }}
          readOnly: true
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
