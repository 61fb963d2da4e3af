#!/usr/bin/env bash
# Host setup for sandbox-kernel on Debian/Ubuntu, as root:
#   Docker engine + gVisor (runsc) registered with the daemon, dockerd running;
#   bubblewrap and firejail for the daemon-less backends (see docs/backends.md).
# Idempotent: safe to run again. Starts dockerd detached when no service manager does.
#
# gVisor: the current one, built from its Go module (`go install`, pinned in
# runsc_current.env, checked) and registered with dockerd as runsc-current, the kernelspecs'
# default runtime; Debian's runsc (2024) is installed and registered as runsc beside it.
# Needs Go (https://go.dev/dl, the version gVisor's go.mod names) and the Go module proxy.
# SANDBOX_KERNEL_RUNSC=debian: no build, Debian's runsc only (its wider gap table); the
# kernelspecs must then name runtime runsc. Why: docs/backends.md, "The current gVisor".
set -euo pipefail

log() { printf '[setup-host] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root (apt-get and dockerd need it)"; exit 1; }

# The current gVisor: a pin, so every host runs the same, checked build (RUNSC_CURRENT_PIN,
# _RUNTIME and _DIR, shared with the Python side).
. "$(dirname "${BASH_SOURCE[0]}")/runsc_current.env"
case "${SANDBOX_KERNEL_RUNSC:-current}" in
  current) want_current=1 ;;
  debian) want_current=
    log "SANDBOX_KERNEL_RUNSC=debian: Debian's runsc only; kernelspecs need --runtime runsc" ;;
  *) log "SANDBOX_KERNEL_RUNSC=${SANDBOX_KERNEL_RUNSC}: expected 'current' (the default) or 'debian'"; exit 1 ;;
esac
go_bin=
if [ -n "$want_current" ]; then
  go_bin=$(command -v go || { [ -x /usr/local/go/bin/go ] && echo /usr/local/go/bin/go; } || true)
  [ -n "$go_bin" ] || { log "building the current gVisor needs Go: install it \
(https://go.dev/doc/install, into /usr/local/go or on PATH) and run again; or, knowingly, \
SANDBOX_KERNEL_RUNSC=debian for Debian's older runsc (docs/security.md lists its extra gaps)"; exit 1; }
fi

. /etc/os-release
codename=${VERSION_CODENAME:-bookworm}
export DEBIAN_FRONTEND=noninteractive

# The mirror this machine's apt already uses: we add a suite to it, never a new host.
apt_mirror() {
  local uri
  uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
  [ -n "$uri" ] || uri=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
                          | awk '{for(i=2;i<=NF;i++) if($i ~ /^[a-z]+:\/\//){print $i; exit}}' | grep -v security | head -n1 || true)
  printf '%s' "$uri"
}

if [ "${ID:-}" = debian ] && ! grep -rqs -- "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  mirror=$(apt_mirror)
  [ -n "$mirror" ] || { log "cannot find this machine's Debian mirror in /etc/apt"; exit 1; }
  log "adding ${codename}-backports from $mirror (newer runsc, systrap platform)"
  echo "deb $mirror ${codename}-backports main" > /etc/apt/sources.list.d/sandbox-kernel-backports.list
fi

log "apt-get update"
apt-get update -qq
log "installing docker.io, debootstrap, bubblewrap, firejail"
apt-get install -y -qq --no-install-recommends docker.io debootstrap iproute2 procps ca-certificates \
  bubblewrap firejail libseccomp2 >/dev/null

# firejail backend: a dedicated host user (firejail has no --uid; it needs a passwd entry,
# a shell to run the command with inside the chroot, and the kernel's home path), and
# firejail's --chroot, which Debian ships disabled. Enabling it lets any local user chroot
# into root-owned, non-writable directories under firejail's rules (docs/backends.md).
if ! getent passwd sandbox-kernel >/dev/null; then
  log "creating the host user sandbox-kernel (firejail backend)"
  useradd --system --no-create-home --home-dir /home/sandbox --shell /bin/sh sandbox-kernel
fi
usermod --home /home/sandbox --shell /bin/sh --lock sandbox-kernel >/dev/null 2>&1 || true
fj_conf=/etc/firejail/firejail.config
if [ -f "$fj_conf" ] && ! grep -qE '^\s*chroot\s+yes' "$fj_conf"; then
  log "enabling firejail's --chroot in $fj_conf (firejail backend)"
  sed -i -E 's/^\s*#?\s*chroot\s+(yes|no)\s*$/chroot yes/' "$fj_conf"
  grep -qE '^\s*chroot\s+yes' "$fj_conf" || echo 'chroot yes' >> "$fj_conf"
fi
runsc_policy=$(apt-cache policy runsc 2>/dev/null || true)
if [ "${ID:-}" = debian ] && [[ "$runsc_policy" == *"${codename}-backports"* ]]; then
  log "installing runsc from ${codename}-backports"
  apt-get install -y -qq -t "${codename}-backports" runsc >/dev/null
else
  log "installing runsc"
  apt-get install -y -qq runsc >/dev/null
fi
runsc_path=$(command -v runsc)
log "runsc: $("$runsc_path" --version 2>/dev/null | head -n1)"

# The module version a Go-built binary carries ('' if none): what we check a build against.
built_version() { "$go_bin" version -m "$1" 2>/dev/null | awk '$1 == "mod" && $2 == "gvisor.dev/gvisor" {print $3}'; }
# `runsc --version`'s first line for our build: `go install` leaves it VERSION_MISSING, so the
# pin is stamped in; the tests and `doctor` read the release (its date) from there.
stamped() { [ "$("$1" --version 2>/dev/null | head -n1)" = "runsc version $RUNSC_CURRENT_PIN" ]; }
# build_pinned PACKAGE NAME [GO FLAGS...]: `go install` of PACKAGE at the pin into
# $RUNSC_CURRENT_DIR/NAME (a failed or foreign build leaves nothing behind).
build_pinned() {
  local pkg=$1 name=$2 build got; shift 2
  log "building $name ($pkg@$RUNSC_CURRENT_PIN) with $("$go_bin" version) (go install; minutes)"
  mkdir -p "$RUNSC_CURRENT_DIR"
  build=$(mktemp -d "$RUNSC_CURRENT_DIR/.build.XXXXXX")
  # gVisor's documented way (gvisor.dev/docs/user_guide/install): its `go` branch, static
  # (CGO_ENABLED=0); a module pin, so no VCS stamping is needed. nice: hosts are shared.
  if ! GOBIN=$build CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
       nice -n 19 "$go_bin" install "$@" "$pkg@$RUNSC_CURRENT_PIN"; then
    rm -rf "$build"; rmdir "$RUNSC_CURRENT_DIR" 2>/dev/null || true
    log "go install $pkg@$RUNSC_CURRENT_PIN failed (see above): is the pin a published module \
version, Go as recent as gVisor's go.mod asks, the Go module proxy (GOPROXY) reachable? \
(Debian's older runsc instead, knowingly: SANDBOX_KERNEL_RUNSC=debian)"
    exit 1
  fi
  got=$(built_version "$build/${pkg##*/}")
  if [ "$got" != "$RUNSC_CURRENT_PIN" ]; then
    rm -rf "$build"; rmdir "$RUNSC_CURRENT_DIR" 2>/dev/null || true
    log "the built $name is gvisor.dev/gvisor ${got:-(no module version)}, not $RUNSC_CURRENT_PIN"
    exit 1
  fi
  chmod 0755 "$build/${pkg##*/}"
  mv -f "$build/${pkg##*/}" "$RUNSC_CURRENT_DIR/$name"
  rm -rf "$build"
  log "$name $RUNSC_CURRENT_PIN installed: $RUNSC_CURRENT_DIR/$name"
}
current_path=
if [ -n "$want_current" ]; then
  current_path=$RUNSC_CURRENT_DIR/runsc
  if [ -x "$current_path" ] && [ "$(built_version "$current_path")" = "$RUNSC_CURRENT_PIN" ] \
     && stamped "$current_path"; then
    log "runsc $RUNSC_CURRENT_PIN already built: $current_path"
  else
    build_pinned gvisor.dev/gvisor/runsc runsc \
      "-ldflags=-X gvisor.dev/gvisor/runsc/version.version=$RUNSC_CURRENT_PIN"
    stamped "$current_path" || { log "$current_path does not report version $RUNSC_CURRENT_PIN"; exit 1; }
  fi
  # containerd's shim for the same gVisor (Kubernetes, RuntimeClass runsc): the module's
  # shim/ package; containerd finds it by this name on its PATH (docs/backends.md).
  shim_path=$RUNSC_CURRENT_DIR/containerd-shim-runsc-v1
  if [ -x "$shim_path" ] && [ "$(built_version "$shim_path")" = "$RUNSC_CURRENT_PIN" ]; then
    log "containerd-shim-runsc-v1 $RUNSC_CURRENT_PIN already built: $shim_path"
  else
    build_pinned gvisor.dev/gvisor/shim containerd-shim-runsc-v1
  fi
fi

# runsc needs --network=none on this kernel ("cannot run with network enabled in root
# network namespace", fixed upstream in release-20240807); it is also the isolation we want.
# --oci-seccomp makes runsc enforce the container's seccomp profile inside gVisor; the
# provisioner refuses to start without it.
# The opt-in runsc-current gets the same runtimeArgs; Docker's default runtime is untouched.
daemon_json_changed=$(python3 - "$runsc_path" "$RUNSC_CURRENT_RUNTIME" "$current_path" <<'PY'
import json, os, sys
path = "/etc/docker/daemon.json"
cfg = {}
if os.path.exists(path):
    with open(path) as f:
        text = f.read().strip()
    cfg = json.loads(text) if text else {}
args = ["--network=none", "--oci-seccomp"]
want = {"runsc": {"path": sys.argv[1], "runtimeArgs": args}}
if sys.argv[3]:
    want[sys.argv[2]] = {"path": sys.argv[3], "runtimeArgs": list(args)}
runtimes = cfg.get("runtimes", {})
if any(runtimes.get(name) != spec for name, spec in want.items()):
    cfg.setdefault("runtimes", {}).update(want)
    os.makedirs("/etc/docker", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=2)
    os.replace(tmp, path)
    print("changed")
PY
)

daemon_up() { timeout 5 docker info >/dev/null 2>&1; }
runtimes_json() { docker info --format '{{json .Runtimes}}' 2>/dev/null || true; }
# Every runtime we registered is loaded, with its flags.
runtimes_loaded() {
  local json; json=$(runtimes_json)
  [[ "$json" == *oci-seccomp* ]] || return 1
  [ -z "$current_path" ] || [[ "$json" == *"\"$RUNSC_CURRENT_RUNTIME\""*"$current_path"* ]]
}

if daemon_up && [ -n "$daemon_json_changed" ]; then
  # dockerd reloads its runtimes on SIGHUP; running containers are not disturbed.
  log "reloading dockerd's configuration (runsc runtime changed)"
  if command -v systemctl >/dev/null && systemctl is-active --quiet docker 2>/dev/null; then
    systemctl reload docker || pkill -HUP -x dockerd
  else
    pkill -HUP -x dockerd
  fi
  for _ in $(seq 50); do runtimes_loaded && break; sleep 0.2; done
fi

if daemon_up && runtimes_loaded; then
  log "dockerd running with runsc registered"
else
  if daemon_up; then
    log "restarting dockerd to load the runsc runtime"
    if command -v systemctl >/dev/null && systemctl is-active --quiet docker 2>/dev/null; then
      systemctl restart docker
    else
      pkill -x dockerd || true
      for _ in $(seq 50); do pgrep -x dockerd >/dev/null || break; sleep 0.2; done
    fi
  fi
  if ! daemon_up; then
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
      systemctl enable --now docker
    else
      log "starting dockerd detached (no service manager); log: /var/log/dockerd.log"
      setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
    fi
  fi
  for _ in $(seq 60); do daemon_up && break; sleep 1; done
  daemon_up || { log "dockerd did not come up; see /var/log/dockerd.log"; tail -n 20 /var/log/dockerd.log >&2 || true; exit 1; }
fi
runtimes_loaded || { log "runsc (with --oci-seccomp)${current_path:+ or $RUNSC_CURRENT_RUNTIME} is not registered with dockerd"; exit 1; }
log "ok: dockerd $(docker version --format '{{.Server.Version}}'), runtimes: $(docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}')"
