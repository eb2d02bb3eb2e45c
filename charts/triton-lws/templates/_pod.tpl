{{/*
The pod template of a group member. Leader and workers get the same node share (GPUs, EFA,
CPU, memory, hugepages), the same volumes and the same security context; they differ in the
launcher role, ports and probes. Called with (dict "root" $ "role" "leader"|"worker").
*/}}
{{- define "triton-lws.podTemplate" -}}
{{- $ := .root }}
{{- $role := .role }}
{{- $v := $.Values -}}
metadata:
  # Selector labels only: a chart or version label here would roll every group (tens of
  # minutes each) on a mere chart bump.
  labels:
    {{- include "triton-lws.selectorLabels" $ | nindent 4 }}
    app.kubernetes.io/part-of: megapod
    app.kubernetes.io/component: {{ $role }}
spec:
  serviceAccountName: {{ include "triton-lws.fullname" $ }}
  # The pods never talk to the API server (no kubectl, no pods/exec): no token at all.
  automountServiceAccountToken: false
  enableServiceLinks: false
  # The launcher drains in-flight requests on SIGTERM within this budget, then stops every rank.
  terminationGracePeriodSeconds: {{ $v.launcher.terminationGracePeriodSeconds }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 1000
    # Group-readable Secret files (the ssh keys) for the non-root launcher.
    fsGroup: 1000
    seccompProfile:
      type: RuntimeDefault
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if and $v.group.topology.key (eq $v.group.topology.mode "preferred") }}
  # Prefer the domain the rest of this group is in (the LWS webhook labels every pod with its
  # group's key; matchLabelKeys needs Kubernetes 1.31+, older API servers drop the term). A
  # preference never blocks scheduling, so the Cluster Autoscaler can still add a group.
  affinity:
    podAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: {{ $v.group.topology.key | quote }}
            labelSelector:
              matchLabels:
                {{- include "triton-lws.selectorLabels" $ | nindent 16 }}
            matchLabelKeys:
              - leaderworkerset.sigs.k8s.io/group-key
  {{- end }}
  containers:
    - name: {{ $role }}
      image: {{ $v.image.ref | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      command: ["python", "-m", "steps.launcher"]
      args:
        {{- if eq $role "leader" }}
        - leader
        - --backend
        - {{ $v.backend | quote }}
        - --model-repository
        - {{ $v.model.repository | quote }}
        - --world-size
        - {{ $v.group.worldSize | quote }}
        - --gpus-per-node
        - {{ $v.group.gpusPerPod | quote }}
        - --ssh-port
        - {{ $v.ports.ssh | quote }}
        - --identity
        - /etc/megapod/ssh/id_ecdsa
        - --known-hosts
        - /etc/megapod/ssh/known_hosts
        - --barrier-timeout
        - {{ $v.launcher.barrierTimeoutSeconds | quote }}
        - --http-port
        - {{ $v.ports.http | quote }}
        - --grpc-port
        - {{ $v.ports.grpc | quote }}
        - --metrics-port
        - {{ $v.ports.metrics | quote }}
        - --grace-period
        - {{ $v.launcher.terminationGracePeriodSeconds | quote }}
        {{- else }}
        - worker
        - --ssh-port
        - {{ $v.ports.ssh | quote }}
        - --authorized-keys
        - /etc/megapod/ssh/authorized_keys
        - --host-key
        - /etc/megapod/ssh/ssh_host_ecdsa_key
        - --grace-period
        - {{ $v.launcher.terminationGracePeriodSeconds | quote }}
        {{- end }}
      env:
        - name: HOME
          value: /tmp
        - name: TMPDIR
          value: /tmp
        # Open MPI's own traffic (launch, wire-up) over TCP; NCCL carries the tensors.
        - name: OMPI_MCA_pml
          value: ^cm,ucx
        - name: OMPI_MCA_btl
          value: tcp,self
        - name: OMPI_MCA_btl_tcp_if_exclude
          value: lo,docker0
        - name: NCCL_SOCKET_IFNAME
          value: ^lo,docker
        - name: NCCL_DEBUG
          value: WARN
        {{- if gt (int $v.resources.efa) 0 }}
        # NCCL over EFA through the aws-ofi-nccl plugin (libfabric efa provider, GPUDirect RDMA).
        - name: FI_PROVIDER
          value: efa
        - name: FI_EFA_USE_DEVICE_RDMA
          value: "1"
        - name: FI_EFA_FORK_SAFE
          value: "1"
        {{- end }}
      ports:
        {{- if eq $role "leader" }}
        - name: http
          containerPort: {{ $v.ports.http }}
        - name: grpc
          containerPort: {{ $v.ports.grpc }}
        - name: metrics
          containerPort: {{ $v.ports.metrics }}
        {{- else }}
        - name: ssh
          containerPort: {{ $v.ports.ssh }}
        {{- end }}
      {{- $p := $v.probes }}
      {{- if eq $role "leader" }}
      # Startup covers the worker barrier plus engine load; readiness/liveness start after it.
      startupProbe:
        httpGet:
          path: /v2/health/live
          port: http
        periodSeconds: {{ $p.periodSeconds }}
        timeoutSeconds: {{ $p.timeoutSeconds }}
        failureThreshold: {{ div (add $p.startupTimeoutSeconds $p.periodSeconds -1) $p.periodSeconds }}
      readinessProbe:
        httpGet:
          path: /v2/health/ready
          port: http
        periodSeconds: {{ $p.periodSeconds }}
        timeoutSeconds: {{ $p.timeoutSeconds }}
        failureThreshold: {{ $p.failureThreshold }}
      livenessProbe:
        httpGet:
          path: /v2/health/live
          port: http
        periodSeconds: {{ $p.periodSeconds }}
        timeoutSeconds: {{ $p.timeoutSeconds }}
        failureThreshold: {{ $p.failureThreshold }}
      {{- else }}
      # A worker is ready when its sshd accepts connections: that is all the leader needs.
      readinessProbe:
        tcpSocket:
          port: ssh
        periodSeconds: {{ $p.periodSeconds }}
        timeoutSeconds: {{ $p.timeoutSeconds }}
        failureThreshold: {{ $p.failureThreshold }}
      {{- end }}
      {{- $r := $v.resources }}
      resources:
        {{- range $kind := list "requests" "limits" }}
        {{ $kind }}:
          cpu: {{ $r.cpu | quote }}
          memory: {{ $r.memory | quote }}
          {{- if gt (int $v.group.gpusPerPod) 0 }}
          nvidia.com/gpu: {{ $v.group.gpusPerPod }}
          {{- end }}
          {{- if gt (int $r.efa) 0 }}
          vpc.amazonaws.com/efa: {{ $r.efa }}
          {{- end }}
          {{- with $r.hugepages2Mi }}
          hugepages-2Mi: {{ . | quote }}
          {{- end }}
        {{- end }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities:
          drop: ["ALL"]
      volumeMounts:
        - name: model
          mountPath: {{ $v.model.mountPath }}
          readOnly: true
        - name: ssh
          mountPath: /etc/megapod/ssh
          readOnly: true
        - name: shm
          mountPath: /dev/shm
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: model
      persistentVolumeClaim:
        claimName: {{ $v.model.volumeClaim }}
        readOnly: true
    - name: ssh
      secret:
        secretName: {{ include "triton-lws.sshSecretName" $ }}
        defaultMode: 0440
    # NCCL and the python backend exchange tensors through shared memory.
    - name: shm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $r.shmSize }}
    - name: tmp
      emptyDir: {}
{{- end }}
