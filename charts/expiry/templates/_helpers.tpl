{{/* Names ------------------------------------------------------------------------------------------ */}}

{{- define "expiry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<chart>, or just <release> when it already contains the chart name. Kept to 40 characters so
     that suffixed names ("-sidecar-events", "-serving-cert") stay within 63. */}}
{{- define "expiry.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The namespace of every namespaced object: namespaceOverride, else the release's (for umbrella charts that
     install this one into another namespace than their own). */}}
{{- define "expiry.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride -}}
{{- end -}}

{{- define "expiry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "expiry.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "expiry.tlsSecretName" -}}
{{- if eq .Values.tls.mode "secret" -}}
{{- .Values.tls.secret.name -}}
{{- else -}}
{{- include "expiry.fullname" . }}-tls
{{- end -}}
{{- end -}}

{{/* The DNS names the API server may use to reach the webhook Service; every certificate covers them all. */}}
{{- define "expiry.serviceDNSNames" -}}
{{- $svc := include "expiry.fullname" . -}}
{{- $ns := include "expiry.namespace" . -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson -}}
{{- end -}}

{{/* Labels ----------------------------------------------------------------------------------------- */}}

{{- define "expiry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "expiry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels of an object, as YAML: the standard app.kubernetes.io ones (component as given), then the extra
     maps (earlier ones win), then commonLabels. (dict "root" $ "component" "sidecar" "extra" (list map...)) */}}
{{- define "expiry.labelsFor" -}}
{{- $root := .root -}}
{{- $labels := dict
  "app.kubernetes.io/name" (include "expiry.name" $root)
  "app.kubernetes.io/instance" $root.Release.Name
  "app.kubernetes.io/component" .component
  "app.kubernetes.io/version" $root.Chart.AppVersion
  "app.kubernetes.io/managed-by" $root.Release.Service
  "app.kubernetes.io/part-of" "expiry"
  "helm.sh/chart" (printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_")
-}}
{{- range concat (.extra | default list) (list $root.Values.commonLabels) -}}
{{- $labels = merge $labels (deepCopy (. | default dict)) -}}
{{- end -}}
{{- toYaml $labels -}}
{{- end -}}

{{- define "expiry.labels" -}}
{{- include "expiry.labelsFor" (dict "root" . "component" "operator") -}}
{{- end -}}

{{/* Labels of a monitoring object: the chart's, then monitoring.labels, then the object's own. (dict "root" $ "own" ...) */}}
{{- define "expiry.monitoringLabels" -}}
{{- include "expiry.labelsFor" (dict "root" .root "component" "monitoring" "extra" (list .own .root.Values.monitoring.labels)) -}}
{{- end -}}

{{/* Images ----------------------------------------------------------------------------------------- */}}

{{/* repository@digest, else repository:tag with the tag defaulting to the appVersion; global.imageRegistry, when
     set, replaces the repository's registry (its first part when that names a host: it has a "." or a ":" or
     is "localhost", as container runtimes decide). (dict "image" ... "root" $) */}}
{{- define "expiry.image" -}}
{{- $repository := .image.repository -}}
{{- with (.root.Values.global | default dict).imageRegistry -}}
{{- $parts := splitList "/" $repository -}}
{{- $first := first $parts -}}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) -}}
{{- $parts = rest $parts -}}
{{- end -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) (join "/" $parts) -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Webhook ---------------------------------------------------------------------------------------- */}}

{{/* "matchConditions" or "objectSelector": how the API server keeps pods without the opt-in away. */}}
{{- define "expiry.webhookFilter" -}}
{{- if ne .Values.webhook.filter "auto" -}}
{{- .Values.webhook.filter -}}
{{- else if semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version -}}
matchConditions
{{- else -}}
objectSelector
{{- end -}}
{{- end -}}

{{/* Self-signed TLS -------------------------------------------------------------------------------- */}}

{{/* The CA and serving certificate of tls.mode=selfSigned, as a dict {ca, crt, key, notAfter} (PEM strings).
     Reuses the ones in the existing Secret (lookup) while they still cover the Service's DNS names and are
     not about to expire, so `helm upgrade` keeps them; otherwise generates a new pair. Computed once per
     render and cached, because the Secret, the webhook's caBundle and the Deployment's checksum must agree:
     call it with (include "expiry.selfSignedTLS" . | fromYaml). */}}
{{- define "expiry.selfSignedTLS" -}}
{{- $cache := .Values.__expiryTLSCache | default dict -}}
{{- if not $cache.crt -}}
{{- $names := include "expiry.serviceDNSNames" . | fromJsonArray -}}
{{- $namesKey := join "," $names -}}
{{- $renewBy := add (now | unixEpoch) (mul .Values.tls.selfSigned.renewDaysBefore 86400) -}}
{{- $existing := lookup "v1" "Secret" (include "expiry.namespace" .) (include "expiry.tlsSecretName" .) -}}
{{- $annotations := dig "metadata" "annotations" (dict) $existing -}}
{{- $data := dig "data" (dict) $existing -}}
{{- $reusable := and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key")
      (eq (index $annotations "expiry.io/tls-dns-names" | default "") $namesKey)
      (gt (index $annotations "expiry.io/tls-not-after" | default "0" | atoi | int64) ($renewBy | int64)) -}}
{{- if $reusable -}}
{{- $_ := set $cache "ca" (index $data "ca.crt" | b64dec) -}}
{{- $_ := set $cache "crt" (index $data "tls.crt" | b64dec) -}}
{{- $_ := set $cache "key" (index $data "tls.key" | b64dec) -}}
{{- $_ := set $cache "notAfter" (index $annotations "expiry.io/tls-not-after") -}}
{{- else -}}
{{- $days := int .Values.tls.selfSigned.validityDays -}}
{{- $ca := genCA (printf "%s-webhook-ca" (include "expiry.fullname" .)) $days -}}
{{- $cert := genSignedCert (index $names 2) nil $names $days $ca -}}
{{- $_ := set $cache "ca" $ca.Cert -}}
{{- $_ := set $cache "crt" $cert.Cert -}}
{{- $_ := set $cache "key" $cert.Key -}}
{{- /* genSignedCert's notAfter is now + days; a second less never makes the pair look newer than it is. */ -}}
{{- $_ := set $cache "notAfter" (sub (add (now | unixEpoch) (mul $days 86400)) 1 | toString) -}}
{{- end -}}
{{- $_ := set .Values "__expiryTLSCache" $cache -}}
{{- end -}}
{{- toYaml $cache -}}
{{- end -}}

{{/* The webhook's caBundle (base64 PEM) for the modes that know it at render time. */}}
{{- define "expiry.caBundle" -}}
{{- if eq .Values.tls.mode "selfSigned" -}}
{{- (include "expiry.selfSignedTLS" . | fromYaml).ca | b64enc -}}
{{- else if eq .Values.tls.mode "secret" -}}
{{- .Values.tls.secret.caBundle | trim | printf "%s\n" | b64enc -}}
{{- end -}}
{{- end -}}

{{/* Monitoring ------------------------------------------------------------------------------------- */}}

{{/* The Prometheus rule file shipped with the chart, parsed; empty when the file is absent. Fails on a file
     that is not YAML with groups, naming the file. */}}
{{- define "expiry.alertRules" -}}
{{- $path := "rules/expiry-alerts.yaml" -}}
{{- $text := .Files.Get $path -}}
{{- if $text -}}
{{- $rules := fromYaml $text -}}
{{- if hasKey $rules "Error" -}}
{{- fail (printf "%s is not valid YAML: %s" $path $rules.Error) -}}
{{- end -}}
{{- if not (kindIs "slice" $rules.groups) -}}
{{- fail (printf "%s must be a Prometheus rule file: a mapping with a list under \"groups\"" $path) -}}
{{- end -}}
{{- toYaml $rules -}}
{{- end -}}
{{- end -}}
