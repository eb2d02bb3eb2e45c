#!/usr/bin/env bash
# Build the control plane's binaries from the Go module proxy, cached by version.
#
#   scripts/cluster/build.sh        build what is missing; prints "<group> <folder>" per group
#
# Each folder under scripts/cluster/go/ is a small module of ours that pins one group of
# upstream commands (its `tool` lines); the group is built by ONE `go build ... tool` into
# .tools/cluster/<group>-<versions>/, so changing a pin builds a new folder (go/manifests pins
# modules read only for their YAML). Builds run
# under `nice -n 19`: the machine's cores are shared with the test suite.
# Exit 2 (one line) when the Go module proxy is needed but cannot be reached.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
GO_DIR="$ROOT/scripts/cluster/go"
CACHE="${MEGAPOD_CLUSTER_TOOLS:-$ROOT/.tools/cluster}"
GROUPS_ALL=(etcd kubernetes kwok prometheus-adapter argo-workflows)
export CGO_ENABLED=0
# Never let a build edit our go.mod/go.sum; keep the machine's other GOFLAGS.
export GOFLAGS="${GOFLAGS:-} -mod=readonly"

log() { printf '\033[1m[cluster-build]\033[0m %s\n' "$*" >&2; }

command -v go >/dev/null || { echo "cluster build: go not found in PATH (Go >= 1.26 is needed)" >&2; exit 2; }

# The versions of the modules a group's tools come from, e.g. "v1.34.4-v0.8.0".
group_key() {
  # -e: Argo's ui package does not load from the module cache (its embed target is missing).
  go -C "$GO_DIR/$1" list -e -f '{{.Module.Version}}' tool | awk '!seen[$0]++' | paste -sd- -
}

# Version of one module in a group's build list.
module_version() {
  go -C "$GO_DIR/$1" list -m -f '{{.Version}}' "$2"
}

# Download a group's modules; the only step that needs the network.
download() {
  local err
  if ! err="$(go -C "$GO_DIR/$1" mod download 2>&1)"; then
    echo "cluster build: cannot download the modules of $1 from the Go module proxy" \
      "(GOPROXY=$(go env GOPROXY)): $(printf '%s\n' "$err" | grep -m1 -v '^\s*$')" >&2
    exit 2
  fi
}

# ldflags that stamp the version upstream's release builds stamp.
ldflags() {
  local k v
  case "$1" in
    kubernetes)
      k="$(module_version kubernetes k8s.io/kubernetes)"
      v=k8s.io/component-base/version
      k="${k#v}"
      # helm's kubeVersion checks read gitVersion; unstamped it is v0.0.0-master.
      echo "-X $v.gitVersion=v$k -X $v.gitMajor=${k%%.*} -X $v.gitMinor=$(cut -d. -f2 <<<"$k")" \
        "-X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z" \
        "-X sigs.k8s.io/lws/pkg/version.GitVersion=$(module_version kubernetes sigs.k8s.io/lws)" ;;
    argo-workflows)
      v="$(module_version argo-workflows github.com/argoproj/argo-workflows/v4)"
      k=github.com/argoproj/argo-workflows/v4
      echo "-X $k.version=$v -X $k.gitTag=$v -X $k.gitTreeState=clean" ;;
  esac
}

# Argo's CLI embeds ui/dist/app (built by yarn, absent from the module zip) and the module
# cache is read-only: build from a writable copy of the pinned module with a one-page stub.
argo_source() {
  local src="$CACHE/src/argo-workflows-$1" mod
  if [ ! -f "$src/ui/dist/app/index.html" ]; then
    mod="$(go -C "$GO_DIR/argo-workflows" list -m -f '{{.Dir}}' github.com/argoproj/argo-workflows/v4)"
    rm -rf "$src" && mkdir -p "$(dirname "$src")"
    cp -r "$mod" "$src" && chmod -R u+w "$src"
    mkdir -p "$src/ui/dist/app"
    echo '<!doctype html><title>Argo Workflows (UI not built)</title>' >"$src/ui/dist/app/index.html"
  fi
  echo "$src"
}

build_group() {
  local group="$1" key out start
  download "$group"  # a no-op (no network) once the module cache holds the pins
  key="$(group_key "$group")"
  out="$CACHE/$group-$key"
  if [ -f "$out/.complete" ]; then
    echo "$group $out"
    return
  fi
  rm -rf "$out" && mkdir -p "$out"
  log "$group $key: go build (cold: minutes; the Go build cache makes rebuilds fast)"
  start=$SECONDS
  if [ "$group" = argo-workflows ]; then
    # Its own go.mod/go.sum are the module graph our wrapper resolves (argo is its only require).
    nice -n 19 go -C "$(argo_source "$key")" build -o "$out/" -ldflags "$(ldflags "$group")" \
      ./cmd/argo ./cmd/workflow-controller >&2
  else
    nice -n 19 go -C "$GO_DIR/$group" build -o "$out/" -ldflags "$(ldflags "$group")" tool >&2
  fi
  echo "$((SECONDS - start))" >"$out/.build-seconds"
  touch "$out/.complete"
  log "$group $key: built in $((SECONDS - start))s"
  echo "$group $out"
}

for group in "${GROUPS_ALL[@]}"; do
  build_group "$group"
done
download manifests  # read for YAML only (the monitoring.coreos.com CRDs)
