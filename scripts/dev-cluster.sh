#!/usr/bin/env bash
# A single-node Kubernetes on this machine, for the kubernetes backend's tests (issue 23).
#
#   scripts/dev-cluster.sh build   # only the binaries (cached; a fresh machine builds once)
#   scripts/dev-cluster.sh up      # build if needed, start, print `export KUBECONFIG=...` last
#   scripts/dev-cluster.sh down    # stop what `up` started, remove the node's pods and state
#
# Real components, built from their Go modules (no registry ships Kubernetes): etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, the CNI plugins the CRI
# needs, a pause image, and the node's runtime, containerd 1.7 (CRI plugin), as an
# instance of its own: own config, root, state and socket under $STATE, so Docker's
# containerd is never touched. gVisor is the RuntimeClass `gvisor` (handler `runsc`):
# gVisor's own containerd shim (one sandbox per pod) runs runsc with network none, so a pod
# of that class has only loopback, whatever the CNI gives it. Where root lacks
# CAP_SYS_RESOURCE (these machines), the shim is built with one fatal error ignored
# (build_shim says which and why); elsewhere it is gVisor's, unmodified.
#
# Why these versions: this machine kind has cgroup v1; kubelet 1.34 is the last whose
# failCgroupV1 defaults to false (1.35 needs it turned off, which kubelet.yaml does anyway).
# containerd 1.7: the oldest that starts gVisor's current shim (build_containerd); it
# speaks CRI v1, as kubelet 1.34 wants, and runs on cgroup v1.
# Idempotent; as root. Everything it starts or writes is under $STATE, $CACHE, the cgroup
# $CGROUP_PARENT and the bridge $BRIDGE: `down` removes exactly those (the cache stays).
set -euo pipefail

K8S_VERSION=v1.34.4          # k8s.io/kubernetes; its staging modules are v0.34.4
ETCD_VERSION=v3.6.16         # the etcd minor that Kubernetes 1.34 is tested with
CNI_VERSION=v1.9.1           # github.com/containernetworking/plugins
CONTAINERD_VERSION=v1.7.35   # the node's runtime: see build_containerd
# gvisor.dev/gvisor's `go` branch: the pin setup_host.sh builds runsc-current at
# (RUNSC_CURRENT_PIN, RUNSC_CURRENT_DIR), so the node runs the same gVisor
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../sandbox_kernel/host/runsc_current.env
. "$HERE/../sandbox_kernel/host/runsc_current.env"
GVISOR_PIN=$RUNSC_CURRENT_PIN
[ -n "$GVISOR_PIN" ] || { echo "[dev-cluster] no RUNSC_CURRENT_PIN in runsc_current.env" >&2; exit 1; }

CACHE=${SANDBOX_KERNEL_K8S_CACHE:-/var/cache/sandbox-kernel/k8s}
STATE=${SANDBOX_KERNEL_K8S_STATE:-/var/lib/sandbox-kernel-k8s}
BIN=$CACHE/$K8S_VERSION/bin
CGROUP_PARENT=sandbox-kernel-k8s  # kubelet's cgroupRoot, in every v1 hierarchy
BRIDGE=skk8s0                     # the CNI bridge (pods get an address; gVisor pods don't use it)
POD_SUBNET=10.213.0.0/24          # no gateway, no masquerade, no route out: nothing leaves the bridge
SERVICE_SUBNET=10.213.1.0/24
API_PORT=16443                    # apiserver on 127.0.0.1 only
ETCD_CLIENT_PORT=12379
ETCD_PEER_PORT=12380
KUBELET_PORT=10250
# The node's address (the kubelet's, which the API server dials for logs and attach): the
# kubelet refuses a loopback node IP, and without an address the API server cannot reach
# it. A /32 of its own on the bridge, outside the pod subnet: pods have no route to it
# (and gVisor pods no interface), and nothing routes it here from outside this host.
NODE_IP=10.213.2.1
NODE=sandbox-kernel-node
KERNEL_IMAGE=${SANDBOX_KERNEL_IMAGE:-sandbox-kernel/python:latest}
CTR_SOCK=$STATE/run/containerd/containerd.sock
KUBECONFIG_ADMIN=$STATE/pki/admin.kubeconfig

GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
log() { printf '[dev-cluster] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------------------- build
# Every go build runs at nice 19: the machine is shared and has 2 cores.
gobuild() { nice -n 19 env GOFLAGS="-trimpath -buildvcs=false -mod=mod" CGO_ENABLED=0 "$GO" "$@"; }
in_dir() { (cd "$1" && shift && "$@"); }
gobin() { mkdir -p "$1" && GOBIN=$1 GOFLAGS="-trimpath -buildvcs=false" nice -n 19 env CGO_ENABLED=0 "$GO" install "$2"; }

# time_build NAME CMD...: runs CMD unless $BIN/NAME exists; logs how long the build took.
time_build() {
  local name=$1; shift
  [ -x "$BIN/$name" ] && return 0
  local t0=$SECONDS
  log "building $name (once; cached in $BIN)"
  "$@" || die "building $name failed (see above); the Go module proxy must serve the pinned versions"
  [ -x "$BIN/$name" ] || die "building $name produced no $BIN/$name"
  log "built $name in $((SECONDS - t0)) s"
  echo "$name $((SECONDS - t0))s $(date -u +%FT%TZ)" >>"$CACHE/$K8S_VERSION/build-times"
}

# A scratch module requiring k8s.io/kubernetes at one release; the staging modules are
# replaced with the same release (k8s.io/kubernetes' own go.mod points them at ./staging,
# which is why `go install k8s.io/kubernetes/cmd/...@v` refuses it).
k8s_module() {
  local dir=$CACHE/$K8S_VERSION/src/kubernetes staging=v0${K8S_VERSION#v1}
  [ -f "$dir/go.mod" ] && return 0
  mkdir -p "$dir"
  local mod
  mod=$("$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$mod" ] || die "the Go module proxy did not give k8s.io/kubernetes@$K8S_VERSION"
  {
    echo "module sandbox-kernel.local/k8s-build"
    echo
    sed -n 's/^go \(.*\)/go \1/p' "$mod"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    sed -n 's|^\t\(k8s.io/[^ ]*\) => ./staging/src/.*|\t\1 => \1 '"$staging"'|p' "$mod"
    echo ")"
  } >"$dir.tmp"
  mv "$dir.tmp" "$dir/go.mod"
}

build_k8s() {
  local dir=$CACHE/$K8S_VERSION/src/kubernetes v=$K8S_VERSION minor
  minor=${v#v1.}; minor=${minor%%.*}
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  k8s_module
  local name missing=() pkgs=()
  for name in kube-apiserver kube-scheduler kube-controller-manager kubelet; do
    [ -x "$BIN/$name" ] || { missing+=("$name"); pkgs+=("k8s.io/kubernetes/cmd/$name"); }
  done
  [ ${#missing[@]} = 0 ] && return 0
  # one go build for them all: it shares their packages and keeps both cores busy
  local t0=$SECONDS
  log "building ${missing[*]} (once; cached in $BIN)"
  in_dir "$dir" gobuild build -ldflags "$ld" -o "$BIN/" "${pkgs[@]}" ||
    die "building ${missing[*]} failed (see above); the Go module proxy must serve $K8S_VERSION"
  log "built ${missing[*]} in $((SECONDS - t0)) s"
  echo "$(IFS=+; echo "${missing[*]}") $((SECONDS - t0))s $(date -u +%FT%TZ)" >>"$CACHE/$K8S_VERSION/build-times"
}

build_etcd() {
  local dir=$CACHE/$K8S_VERSION/src/etcd
  if [ ! -f "$dir/go.mod" ]; then
    mkdir -p "$dir"
    # etcd's submodules replace each other with ../ paths too: pin them all to one release
    cat >"$dir/go.mod" <<EOF
module sandbox-kernel.local/etcd-build

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION

replace (
	go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 $ETCD_VERSION
	go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/server/v3 => go.etcd.io/etcd/server/v3 $ETCD_VERSION
)
EOF
  fi
  time_build etcd in_dir "$dir" gobuild build -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
}

# containerd 1.7 from its module, not Debian 12's 1.6: gVisor's shim at the pin is built on
# containerd 2's shim library, whose `start` answers with bootstrap parameters (JSON) that
# containerd 1.6 takes for a socket address; 1.7 is the oldest that reads them, and it
# still speaks config version 2, cgroup v1 and CRI v1. Debian's runc shim and `ctr` serve
# it unchanged.
build_containerd() {
  local dir=$CACHE/$K8S_VERSION/src/containerd
  if [ ! -f "$dir/go.mod" ]; then
    mkdir -p "$dir"
    printf 'module sandbox-kernel.local/containerd-build\n\ngo 1.25.0\n\nrequire github.com/containerd/containerd %s\n' \
      "$CONTAINERD_VERSION" >"$dir/go.mod"
  fi
  # static, without the cgo-only snapshotters (btrfs, devmapper, zfs): overlayfs is used
  time_build containerd in_dir "$dir" gobuild build -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X github.com/containerd/containerd/version.Version=$CONTAINERD_VERSION" \
    -o "$BIN/containerd" github.com/containerd/containerd/cmd/containerd
}

build_cni() {
  local p
  for p in main/loopback main/bridge ipam/host-local; do
    time_build "cni/${p#*/}" gobin "$BIN/cni" \
      "github.com/containernetworking/plugins/plugins/$p@$CNI_VERSION"
  done
}

# runsc: the one setup_host.sh installs for SANDBOX_KERNEL_RUNSC=current if there, else the
# same pin built here.
RUNSC=$RUNSC_CURRENT_DIR/runsc
build_runsc() {
  [ -x "$RUNSC" ] && return 0
  RUNSC=$BIN/runsc
  time_build runsc gobin "$BIN" "gvisor.dev/gvisor/runsc@$GVISOR_PIN"
}

# gVisor's containerd shim (runtime type io.containerd.runsc.v1: one gVisor sandbox per pod,
# every container of the pod inside it), the package gvisor.dev/gvisor/shim at the same pin.
# Its start lowers its own oom_score_adj to -999 and fails when it cannot; lowering needs
# CAP_SYS_RESOURCE, which root on these machines lacks (CapBnd 000001fffeffffff), and then
# no pod of the class starts. So, where the capability is missing, the dev cluster builds
# it with `go build -overlay`: the module cache's own manager.go, copied at build time with
# that one failure (a permission error only) logged and ignored; the binary's name says so.
# Where CapEff has it, the unmodified shim (a real cluster's node runs the unmodified one).
SHIM_PATCHED_NAME=containerd-shim-runsc-v1.oom-score-nonfatal
has_cap_sys_resource() { # bit 24 of this process's effective capabilities
  local eff
  eff=$(awk '$1 == "CapEff:" {print $2}' /proc/self/status)
  (((16#$eff >> 24) & 1))
}
build_shim() {
  if has_cap_sys_resource; then
    SHIM=$RUNSC_CURRENT_DIR/containerd-shim-runsc-v1  # setup_host.sh builds it at the pin
    [ -x "$SHIM" ] && return 0
    SHIM=$BIN/containerd-shim-runsc-v1
    time_build containerd-shim-runsc-v1 shim_unmodified
  else
    SHIM=$BIN/$SHIM_PATCHED_NAME
    time_build "$SHIM_PATCHED_NAME" shim_patched
  fi
}
shim_unmodified() {
  gobin "$BIN/shim.tmp" "gvisor.dev/gvisor/shim@$GVISOR_PIN" &&
    mv "$BIN/shim.tmp/shim" "$BIN/containerd-shim-runsc-v1" && rmdir "$BIN/shim.tmp"
}
shim_patched() {
  local dir=$CACHE/$K8S_VERSION/src/gvisor-shim src
  mkdir -p "$dir"
  src=$("$GO" mod download -json "gvisor.dev/gvisor@$GVISOR_PIN" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -f "$src/pkg/shim/v1/manager.go" ] || die "no gvisor.dev/gvisor@$GVISOR_PIN in the module cache"
  # go refuses to overlay files beneath GOMODCACHE: the build reads the module through a
  # link to its module cache directory (a `replace` to a directory), unchanged, and the
  # overlay replaces the one file there
  ln -sfn "$src" "$dir/gvisor"
  printf 'module sandbox-kernel.local/gvisor-shim\n\n%s\n\nrequire gvisor.dev/gvisor %s\n\nreplace gvisor.dev/gvisor => ./gvisor\n' \
    "$(sed -n '/^go /p' "$src/go.mod")" "$GVISOR_PIN" >"$dir/go.mod"
  # The one change, checked: for a permission error (EPERM/EACCES) exactly that return
  # becomes a log line. At debug level, as the rest of Start logs: containerd reads the
  # start command's whole output (stdout and stderr) as its reply, so anything printed
  # there breaks the shim's start; `up` says it instead.
  python3 - "$src/pkg/shim/v1/manager.go" "$dir/manager.go" <<'PY' || die "gVisor's manager.go at $GVISOR_PIN is not the one this patch was written for: look at its SetOOMScore call"
import sys
src = open(sys.argv[1]).read()
old = ('\t\treturn shim.BootstrapParams{}, fmt.Errorf("failed to set OOM Score on shim: %w", err)\n')
call = "\tif err := sys.SetOOMScore(cmd.Process.Pid, oomScoreMax); err != nil {\n"
if src.count(call + old) != 1:
    sys.exit(1)
new = (
    "\t\tif !os.IsPermission(err) {\n\t" + old + "\t\t}\n"
    '\t\tlog.L.WithError(err).Debug("sandbox-kernel dev cluster: shim oom_score_adj not '
    'lowered (no CAP_SYS_RESOURCE), continuing")\n'
)
open(sys.argv[2], "w").write("// Generated by sandbox-kernel's scripts/dev-cluster.sh from the module's own file:\n"
    "// SetOOMScore's permission error is logged, not fatal (no CAP_SYS_RESOURCE here).\n"
    + src.replace(call + old, call + new))
PY
  printf '{"Replace": {"%s": "%s"}}\n' "$dir/gvisor/pkg/shim/v1/manager.go" "$dir/manager.go" >"$dir/overlay.json"
  in_dir "$dir" gobuild build -overlay "$dir/overlay.json" -ldflags "-s -w" \
    -o "$BIN/$SHIM_PATCHED_NAME" gvisor.dev/gvisor/shim
}

# The pod sandbox ("pause") image: the CRI needs one for every pod, and no registry
# serves registry.k8s.io here. A static Go program that waits for SIGTERM and reaps
# children, in a one-layer image written as a `docker save` archive for `ctr import`.
PAUSE_IMAGE=sandbox-kernel.local/pause:1
build_pause() {
  local dir=$CACHE/$K8S_VERSION/src/pause
  if [ ! -f "$dir/main.go" ]; then
    mkdir -p "$dir"
    printf 'module sandbox-kernel.local/pause\n\ngo 1.24\n' >"$dir/go.mod"
    cat >"$dir/main.go" <<'EOF'
// The pod sandbox's process: holds the pod's namespaces until the kubelet stops it.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			return
		}
		for { // reap every exited child (PID 1 of the pod)
			if pid, _ := syscall.Wait4(-1, nil, syscall.WNOHANG, nil); pid <= 0 {
				break
			}
		}
	}
}
EOF
  fi
  time_build pause in_dir "$dir" gobuild build -ldflags "-s -w" -o "$BIN/pause" .
  [ -f "$BIN/pause.tar" ] && return 0
  local t
  t=$(mktemp -d)
  mkdir "$t/root"
  cp "$BIN/pause" "$t/root/pause"
  tar -C "$t/root" --owner=0 --group=0 --numeric-owner -cf "$t/layer.tar" pause
  local diff
  diff=$(sha256sum "$t/layer.tar" | cut -d' ' -f1)
  printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/pause"],"User":"65535:65535"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$diff" >"$t/config.json"
  printf '[{"Config":"config.json","RepoTags":["%s"],"Layers":["layer.tar"]}]' "$PAUSE_IMAGE" >"$t/manifest.json"
  tar -C "$t" -cf "$BIN/pause.tar.tmp" manifest.json config.json layer.tar
  mv "$BIN/pause.tar.tmp" "$BIN/pause.tar"
  rm -rf "$t"
}

build_all() {
  mkdir -p "$BIN"
  build_etcd
  build_cni
  build_containerd
  build_runsc
  build_shim
  build_pause
  build_k8s
}

# ---------------------------------------------------------------------------- PKI
# One CA; every component talks TLS with a client certificate, etcd included (other local
# users must not reach etcd or the kubelet).
PKI=$STATE/pki
cert() { # cert NAME SUBJECT EXT(serverAuth|clientAuth|both) [SAN]
  local name=$1 subj=$2 eku=$3 san=${4:-}
  [ -f "$PKI/$name.crt" ] && return 0
  case $eku in both) eku="serverAuth,clientAuth" ;; esac
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subj" \
    -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -z "$san" ] || echo "subjectAltName=$san"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}
kubeconfig() { # kubeconfig NAME (client cert NAME.crt)
  [ -f "$PKI/$1.kubeconfig" ] && return 0
  cat >"$PKI/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sandbox-kernel-dev
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $1
  user:
    client-certificate: $PKI/$1.crt
    client-key: $PKI/$1.key
contexts:
- name: sandbox-kernel-dev
  context: {cluster: sandbox-kernel-dev, user: $1}
current-context: sandbox-kernel-dev
EOF
}
pki() {
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  if [ ! -f "$PKI/ca.crt" ]; then
    openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -days 365 \
      -subj "/CN=sandbox-kernel-dev-ca" -out "$PKI/ca.crt" 2>/dev/null
  fi
  local svc_ip=${SERVICE_SUBNET%.*}.1
  cert etcd "/CN=etcd" both "IP:127.0.0.1,DNS:localhost"
  cert apiserver-etcd-client "/CN=kube-apiserver-etcd-client" clientAuth
  cert apiserver "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,IP:$svc_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  cert kubelet "/CN=$NODE" serverAuth "IP:$NODE_IP,IP:127.0.0.1,DNS:$NODE,DNS:localhost"
  cert node "/O=system:nodes/CN=system:node:$NODE" clientAuth
  cert admin "/O=system:masters/CN=sandbox-kernel-admin" clientAuth
  cert controller-manager "/CN=system:kube-controller-manager" clientAuth
  cert scheduler "/CN=system:kube-scheduler" clientAuth
  [ -f "$PKI/sa.key" ] || {
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  }
  local k
  for k in admin node controller-manager scheduler; do kubeconfig "$k"; done
}

# ---------------------------------------------------------------------------- configs
configs() {
  mkdir -p "$STATE/etc" "$STATE/cni/net.d" "$STATE/log" "$STATE/pid"
  # The runtime handler "runsc": gVisor's shim, one sandbox per pod, running runsc with
  # the flags the Docker backend requires (backends/gvisor.py REQUIRED_RUNSC_ARGS): no
  # network (a pod has only loopback, whatever the CNI set up) and the OCI seccomp
  # profile enforced inside gVisor. The shim reads this file (ConfigPath below).
  mkdir -p "$STATE/bin"
  ln -sfn "$SHIM" "$STATE/bin/containerd-shim-runsc-v1"
  cat >"$STATE/etc/runsc.toml" <<EOF
binary_name = "$RUNSC"
root = "$STATE/run/runsc"
[runsc_config]
  network = "none"
  oci-seccomp = "true"
EOF
  cat >"$STATE/etc/containerd.toml" <<EOF
# The node's own containerd: nothing shared with Docker's (/run/containerd, /var/lib/containerd).
version = 2
root = "$STATE/containerd"
state = "$STATE/run/containerd"
[grpc]
  address = "$CTR_SOCK"
[ttrpc]
  address = "$CTR_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # network namespaces under the state dir, not the host's /var/run/netns; no AppArmor
  # profile loaded into the host's kernel (gVisor pods do not use it)
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  # no oom_score_adj below containerd's own: lowering needs CAP_SYS_RESOURCE (see above)
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$STATE/run/runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runsc]
      # containerd finds the shim by its type's name on its PATH: $STATE/bin has a link
      # of that name to the one build_shim chose
      runtime_type = "io.containerd.runsc.v1"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runsc.options]
        TypeUrl = "io.containerd.runsc.v1.options"
        ConfigPath = "$STATE/etc/runsc.toml"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$BIN/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
  # The CRI of containerd 1.6 and 1.7 wants an address on eth0 for every pod: a bridge with no
  # gateway, no masquerade and no route, so the address leads nowhere but the bridge.
  cat >"$STATE/cni/net.d/10-sandbox-kernel.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "sandbox-kernel-dev",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": false, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_SUBNET"}]],
              "dataDir": "$STATE/cni/ipam"}},
    {"type": "loopback"}
  ]
}
EOF
  cat >"$STATE/etc/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
containerRuntimeEndpoint: unix://$CTR_SOCK
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_PARENT
# this machine kind is cgroup v1: kubelet 1.34 runs on it, in maintenance mode
failCgroupV1: false
failSwapOn: false
resolvConf: ""
podLogsDir: $STATE/pod-logs
volumePluginDir: $STATE/volume-plugins
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
maxPods: 250
EOF
}

# ---------------------------------------------------------------------------- processes
alive() { # alive NAME: the process `up` started as NAME still runs
  local pid
  pid=$(cat "$STATE/pid/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(cat "$STATE/pid/$1.exe")" ]
}
start() { # start NAME BINARY ARGS...: in the background, detached, logged, pid recorded
  local name=$1 bin=$2; shift 2
  alive "$name" && return 0
  log "starting $name (log: $STATE/log/$name.log)"
  PATH="$STATE/bin:$BIN:$PATH" setsid "$bin" "$@" >>"$STATE/log/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/pid/$name.pid"
  readlink -f "$bin" >"$STATE/pid/$name.exe"
}
stop() { # stop NAME: TERM, then KILL after 15 s
  local pid i
  alive "$1" || { rm -f "$STATE/pid/$1.pid"; return 0; }
  pid=$(cat "$STATE/pid/$1.pid")
  kill "$pid" 2>/dev/null || true
  for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$STATE/pid/$1.pid"
}
wait_for() { # wait_for WHAT SECONDS CMD...
  local what=$1 secs=$2 t0=$SECONDS; shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS - t0 < secs)) || die "$what not ready after $secs s (logs: $STATE/log/)"
    sleep 1
  done
}
# The API as the admin, with curl (no kubectl: one binary fewer to build): kapi METHOD PATH [JSON]
kapi() {
  curl -sSf --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" -X "$1" \
    -H 'Content-Type: application/json' "https://127.0.0.1:$API_PORT$2" ${3:+--data "$3"}
}
node_ready() {
  kapi GET "/api/v1/nodes/$NODE" | python3 -c 'import json, sys
conditions = json.load(sys.stdin).get("status", {}).get("conditions", [])
sys.exit(0 if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else 1)'
}
namespaces_with_pods() {
  kapi GET /api/v1/pods | python3 -c 'import json, sys
print("\n".join(sorted({p["metadata"]["namespace"] for p in json.load(sys.stdin)["items"]})))'
}
ctr_() { ctr -a "$CTR_SOCK" -n k8s.io "$@"; }

# kubelet writes kernel tunables it wants (vm.overcommit_memory, kernel.panic,
# kernel.panic_on_oops) once at start: the machine is shared, so the old values go back
# as soon as the node is up, and again at `down`.
SYSCTLS="vm.overcommit_memory kernel.panic kernel.panic_on_oops vm.panic_on_oom"
save_sysctls() {
  [ -f "$STATE/sysctl.orig" ] && return 0
  local k
  for k in $SYSCTLS; do echo "$k=$(sysctl -n "$k")"; done >"$STATE/sysctl.orig"
}
restore_sysctls() {
  [ -f "$STATE/sysctl.orig" ] || return 0
  local kv
  while read -r kv; do sysctl -qw "$kv" || true; done <"$STATE/sysctl.orig"
}

node_address() { # the bridge, made before the CNI would, with the node's address
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip -br addr show dev "$BRIDGE" | grep -qF " $NODE_IP/32" || ip addr add "$NODE_IP/32" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

cgroups_up() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [ "$h" = /sys/fs/cgroup/unified/ ] && continue
    mkdir -p "$h$CGROUP_PARENT"
    if [ -f "${h}cpuset.cpus" ] && [ -z "$(cat "$h$CGROUP_PARENT/cpuset.cpus")" ]; then
      cat "${h}cpuset.cpus" >"$h$CGROUP_PARENT/cpuset.cpus"
      cat "${h}cpuset.mems" >"$h$CGROUP_PARENT/cpuset.mems"
    fi
  done
}

up() {
  [ "$(id -u)" = 0 ] || die "run as root (containerd, kubelet and cgroups need it)"
  [ -d /sys/fs/cgroup/memory ] || die "expected cgroup v1 hierarchies under /sys/fs/cgroup (kubelet $K8S_VERSION runs on v1 with failCgroupV1: false); this host differs: check, then adapt kubelet.yaml"
  # containerd itself is built (build_containerd); Debian's package gives its runc shim and ctr
  command -v containerd-shim-runc-v2 >/dev/null || die "no containerd-shim-runc-v2: apt-get install containerd"
  command -v ctr >/dev/null || die "no ctr: apt-get install containerd"
  build_all
  pki
  configs
  cgroups_up
  node_address
  local e=$PKI
  start etcd "$BIN/etcd" --name "$NODE" --data-dir "$STATE/etcd" \
    --listen-client-urls "https://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls "https://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "https://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "https://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "$NODE=https://127.0.0.1:$ETCD_PEER_PORT" \
    --listen-metrics-urls "" \
    --client-cert-auth --trusted-ca-file "$e/ca.crt" --cert-file "$e/etcd.crt" --key-file "$e/etcd.key" \
    --peer-client-cert-auth --peer-trusted-ca-file "$e/ca.crt" \
    --peer-cert-file "$e/etcd.crt" --peer-key-file "$e/etcd.key"
  wait_for etcd 60 curl -sf --cacert "$e/ca.crt" --cert "$e/apiserver-etcd-client.crt" \
    --key "$e/apiserver-etcd-client.key" "https://127.0.0.1:$ETCD_CLIENT_PORT/health"
  start kube-apiserver "$BIN/kube-apiserver" \
    --bind-address 127.0.0.1 --secure-port "$API_PORT" \
    --etcd-servers "https://127.0.0.1:$ETCD_CLIENT_PORT" --etcd-cafile "$e/ca.crt" \
    --etcd-certfile "$e/apiserver-etcd-client.crt" --etcd-keyfile "$e/apiserver-etcd-client.key" \
    --client-ca-file "$e/ca.crt" --tls-cert-file "$e/apiserver.crt" --tls-private-key-file "$e/apiserver.key" \
    --kubelet-client-certificate "$e/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$e/apiserver-kubelet-client.key" --kubelet-certificate-authority "$e/ca.crt" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$e/sa.pub" --service-account-signing-key-file "$e/sa.key" \
    --service-cluster-ip-range "$SERVICE_SUBNET" --endpoint-reconciler-type none \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --anonymous-auth=false --allow-privileged=false --profiling=false
  wait_for kube-apiserver 120 kapi GET /readyz
  mkdir -p "$STATE/run/containerd"
  start containerd "$BIN/containerd" --config "$STATE/etc/containerd.toml"
  wait_for containerd 60 ctr -a "$CTR_SOCK" version
  import_images
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$PKI/controller-manager.kubeconfig" --bind-address 127.0.0.1 \
    --authentication-kubeconfig "$PKI/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$PKI/controller-manager.kubeconfig" \
    --service-account-private-key-file "$e/sa.key" --root-ca-file "$e/ca.crt" \
    --use-service-account-credentials --leader-elect=false --profiling=false
  start kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$PKI/scheduler.kubeconfig" \
    --authentication-kubeconfig "$PKI/scheduler.kubeconfig" \
    --authorization-kubeconfig "$PKI/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false
  save_sysctls
  write_seccomp_profile
  start kubelet "$BIN/kubelet" --config "$STATE/etc/kubelet.yaml" \
    --kubeconfig "$PKI/node.kubeconfig" --hostname-override "$NODE" \
    --root-dir "$STATE/kubelet" --cert-dir "$PKI" --node-ip "$NODE_IP"
  wait_for "node $NODE" 180 node_ready
  restore_sysctls
  kapi GET /apis/node.k8s.io/v1/runtimeclasses/gvisor >/dev/null 2>&1 ||
    kapi POST /apis/node.k8s.io/v1/runtimeclasses >/dev/null \
      '{"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "gvisor"}, "handler": "runsc"}'
  log "up: node $NODE Ready, RuntimeClass gvisor (handler runsc: ${SHIM##*/}, runsc network none)"
  [ "${SHIM##*/}" != "$SHIM_PATCHED_NAME" ] ||
    log "gVisor's shim does not lower its oom_score_adj here (no CAP_SYS_RESOURCE): dev cluster only"
  echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
}

# The kernel pods' seccomp profile (kubernetes_pod.SECCOMP_PROFILE, a Localhost profile):
# the one the Docker backend enforces inside gVisor, from this checkout's seccomp.py.
write_seccomp_profile() {
  mkdir -p "$STATE/kubelet/seccomp"
  PYTHONPATH="$HERE/.." python3 -c 'import json, sys
from sandbox_kernel.backends.kubernetes_pod import SECCOMP_PROFILE
from sandbox_kernel.backends.seccomp import seccomp_profile
with open(sys.argv[1] + "/" + SECCOMP_PROFILE, "w") as f:
    json.dump(seccomp_profile(), f)' "$STATE/kubelet/seccomp"
}

# The images a pod needs, in the node's containerd (pods use imagePullPolicy: Never).
import_images() {
  ctr_ images ls -q | grep -qx "$PAUSE_IMAGE" || ctr_ images import "$BIN/pause.tar" >/dev/null
  local id
  id=$(docker image inspect -f '{{.Id}}' "$KERNEL_IMAGE" 2>/dev/null) ||
    die "no $KERNEL_IMAGE in Docker: sandbox-kernel image build (quickstart.sh step 3)"
  # re-import when Docker's image changed (its id is the config digest containerd keeps)
  local refs
  refs=$(ctr_ images ls -q)
  if ! grep -qx "docker.io/$KERNEL_IMAGE" <<<"$refs" || ! grep -qx "$id" <<<"$refs"; then
    log "importing $KERNEL_IMAGE into the node's containerd"
    docker save "$KERNEL_IMAGE" | ctr_ images import - >/dev/null
  fi
}

down() {
  [ "$(id -u)" = 0 ] || die "run as root"
  [ -d "$STATE" ] || { log "down: nothing to do"; return 0; }
  # pods first, through the kubelet, so the CRI tears down their network namespaces
  if alive kube-apiserver && alive kubelet; then
    local ns t0=$SECONDS
    for ns in $(namespaces_with_pods 2>/dev/null); do
      kapi DELETE "/api/v1/namespaces/$ns/pods?gracePeriodSeconds=0" >/dev/null 2>&1 || true
    done
    while ((SECONDS - t0 < 60)) && [ -n "$(namespaces_with_pods 2>/dev/null)" ]; do sleep 1; done
  fi
  stop kubelet
  stop kube-scheduler
  stop kube-controller-manager
  if alive containerd; then
    # what the kubelet did not remove: kill and delete every task and container
    local c
    for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s KILL "$c" >/dev/null 2>&1 || true; done
    sleep 1
    for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$c" >/dev/null 2>&1 || true; done
    for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$c" >/dev/null 2>&1 || true; done
  fi
  stop containerd
  # shims and their runsc sandboxes outlive containerd: those of this node's socket and
  # runsc state (a shim killed with -9 leaves its sandbox)
  kill_naming "$CTR_SOCK"
  kill_naming "$STATE/run/runsc"
  stop kube-apiserver
  stop etcd
  restore_sysctls
  # mounts under $STATE (emptyDirs, rootfs overlays, shm, netns), deepest first
  awk -v s="$STATE" '$2 == s || index($2, s "/") == 1 {print $2}' /proc/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
  ip link del "$BRIDGE" 2>/dev/null || true
  local h
  for h in /sys/fs/cgroup/*/"$CGROUP_PARENT"; do
    [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  find /var/log/containers -maxdepth 1 -type l -lname "$STATE/*" -delete 2>/dev/null || true
  rm -rf "$STATE"
  log "down: stopped, node state removed (cached builds stay in $CACHE)"
}
# kill_naming TEXT: SIGKILL every process whose command line contains TEXT (a path of
# this node's), in one pass over /proc
kill_naming() {
  local f pid
  for f in $(grep -lsaF -- "$1" /proc/[0-9]*/cmdline); do
    pid=${f#/proc/}
    kill -9 "${pid%/cmdline}" 2>/dev/null || true
  done
}

[ "${BASH_SOURCE[0]}" = "$0" ] || return 0  # sourced: the functions only
case "${1:-}" in
  build) build_all ;;
  up) up ;;
  down) down ;;
  *) echo "usage: $0 build|up|down" >&2; exit 2 ;;
esac
