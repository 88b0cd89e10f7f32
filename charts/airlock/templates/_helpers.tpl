{{- define "airlock.labels" -}}
app.kubernetes.io/name: airlock-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
{{- define "airlock.selector" -}}
app.kubernetes.io/name: airlock-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
