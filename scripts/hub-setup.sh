#!/usr/bin/env bash
# Recipe (a) of docs/jupyterhub.md in one command, as root: from nothing to a JupyterHub
# that people log in to as their Unix accounts, every kernel in a rootless gVisor sandbox.
#
#   HUB_DOMAIN=hub.example.org scripts/hub-setup.sh
#
# The host (scripts/quickstart.sh), the kernelspec for all users, the server and hub
# configs copied verbatim from docs/examples/ to /etc, a site file with this host's own
# values (written once, from HUB_DOMAIN and HUB_BIND_URL; never overwritten), the hub's
# state folder, the group of who may log in, and the hub as a service (systemd where it
# runs, else started detached). Idempotent: a second run re-checks and leaves a running
# hub running.
#
#   scripts/hub-setup.sh --configs-only ROOT
#
# writes only the files (configs, site file, state folder, systemd unit) under ROOT
# instead of /: what tests/unit/test_hub_setup.py checks.
#
# HUB_DOMAIN: the name users open (https://HUB_DOMAIN/, each user's server on
#   https://<user>.HUB_DOMAIN/: a wildcard DNS record and certificate, docs/jupyterhub.md);
#   "localhost" to try the hub on this machine (http://localhost:<port>).
# HUB_BIND_URL: where the hub's proxy listens (default http://127.0.0.1:8000), behind a
#   TLS-terminating proxy.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=/opt/sandbox-kernel/venv
GROUP=jupyterhub-users
UNIT=sandbox-kernel-hub
ROOT=""
if [ "${1:-}" = --configs-only ]; then
  [ -n "${2:-}" ] || { echo "usage: $0 [--configs-only ROOT]" >&2; exit 2; }
  ROOT=$(realpath "$2")
elif [ -n "${1:-}" ]; then
  echo "usage: $0 [--configs-only ROOT]" >&2; exit 2
fi
ETC_HUB=$ROOT/etc/jupyterhub
ETC_SERVER=$ROOT/etc/jupyter/sandbox
STATE=$ROOT/var/lib/sandbox-kernel-hub
SITE=$ETC_HUB/jupyterhub_site_config.py
LOG=/var/log/$UNIT.log
say() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

site_file() {
  # Only checked names go into Python: a DNS name, an http(s) URL without quotes.
  local domain=${HUB_DOMAIN:-} bind=${HUB_BIND_URL:-http://127.0.0.1:8000} public
  [ -n "$domain" ] || die "set HUB_DOMAIN to the name users open (HUB_DOMAIN=hub.example.org \
$0; it needs a DNS record and a wildcard one, *.hub.example.org: docs/jupyterhub.md), or \
HUB_DOMAIN=localhost to try the hub on this machine"
  [[ $domain =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]] \
    || die "HUB_DOMAIN=$domain is not a DNS name (e.g. hub.example.org)"
  local url_re='^https?://[][A-Za-z0-9.:-]+:[0-9]+/?$'
  [[ $bind =~ $url_re ]] \
    || die "HUB_BIND_URL=$bind is not http://ADDRESS:PORT (e.g. http://127.0.0.1:8000)"
  if [ "$domain" = localhost ]; then public="http://localhost:${bind##*:}"; public=${public%/}
  else public="https://$domain"; fi
  cat <<EOF
# This hub's own values, loaded last by jupyterhub_config.py (the example, installed as
# it is by scripts/hub-setup.sh): edit this file, not that one. Written once by
# scripts/hub-setup.sh (HUB_DOMAIN=$domain); a later run leaves it as it is.
c = get_config()  # noqa: F821

# The hub at $public/hub/, each user's server on an origin of its own,
# <user>.${public#*://}: a wildcard DNS record and certificate (docs/jupyterhub.md).
c.JupyterHub.subdomain_host = "$public"
# Where the hub's proxy listens: a TLS-terminating proxy in front of it (passing the Host
# header on) serves https://$domain and https://*.$domain with a wildcard certificate.
c.JupyterHub.bind_url = "$bind"
EOF
}

write_configs() {
  say "configs: $ETC_SERVER, $ETC_HUB (docs/examples/ as they are), the site file, $STATE"
  local name src dest
  for name in jupyter_server_config.py jupyterhub_config.py; do
    src=docs/examples/$name
    dest=$ETC_HUB/$name; [ "$name" = jupyter_server_config.py ] && dest=$ETC_SERVER/$name
    if [ -e "$dest" ] && ! cmp -s "$src" "$dest"; then
      cp -p "$dest" "$dest.replaced-$(date +%Y%m%d%H%M%S)"
      echo "  $dest differed from $src: replaced (old copy kept beside it; site values \
belong in $SITE)" >&2
    fi
    install -D -m 644 "$src" "$dest"
  done
  if [ -e "$SITE" ]; then
    echo "  $SITE exists: left as it is" >&2
  else
    local text; text=$(site_file)
    install -D -m 644 /dev/null "$SITE"
    printf '%s\n' "$text" >"$SITE"
  fi
  install -d -m 700 "$STATE"  # the hub's database, cookie secret, pid files: root's only
  install -D -m 644 /dev/stdin "$ROOT/etc/systemd/system/$UNIT.service" <<EOF
[Unit]
Description=JupyterHub with sandboxed kernels (sandbox-kernel, docs/jupyterhub.md recipe (a))
After=network-online.target
Wants=network-online.target

[Service]
User=root
WorkingDirectory=/var/lib/sandbox-kernel-hub
Environment=PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ExecStart=$VENV/bin/jupyterhub -f /etc/jupyterhub/jupyterhub_config.py
# SIGTERM to the hub alone: it stops every user's server (each kills what is left in
# that user's cgroups) and its proxy itself.
KillMode=mixed
TimeoutStopSec=120
Restart=on-failure

[Install]
WantedBy=multi-user.target
EOF
}

hub_pid() {  # the running hub's pid, from its own pid file (c.JupyterHub.pid_file)
  local pid
  pid=$(cat "$STATE/jupyterhub.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && grep -qa jupyterhub "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
}

start_service() {
  if [ -d /run/systemd/system ]; then
    say "service: systemd unit $UNIT (enabled, started)"
    systemctl daemon-reload
    systemctl enable --now "$UNIT"
    STOP="systemctl stop $UNIT"; RESTART="systemctl restart $UNIT"; LOGS="journalctl -u $UNIT"
    return
  fi
  # No service manager (a container, say): the hub detached from this shell, in a session
  # of its own, with a clean environment as the unit would give it.
  local hub=(env -i "PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
             LANG=C.UTF-8 HOME=/root "$VENV/bin/jupyterhub" -f /etc/jupyterhub/jupyterhub_config.py)
  STOP="kill \$(cat $STATE/jupyterhub.pid)   # SIGTERM: the hub stops every user's server first"
  RESTART="the stop command, then: cd $STATE && setsid ${hub[*]} >>$LOG 2>&1 </dev/null &"
  LOGS="tail -f $LOG"
  say "service: no service manager here (no systemd); the hub runs detached, log in $LOG"
  local pid
  if pid=$(hub_pid); then
    echo "  the hub is running already (pid $pid): restart it to load changed configs" >&2
    return
  fi
  touch "$LOG" && chmod 600 "$LOG"
  local from; from=$(wc -l <"$LOG")
  (cd "$STATE" && setsid "${hub[@]}" >>"$LOG" 2>&1 </dev/null &)
  for _ in $(seq 120); do
    # grep -c reads to the end (grep -q would end the pipe early: pipefail)
    tail -n +"$((from + 1))" "$LOG" | grep -c "JupyterHub is now running" >/dev/null \
      && hub_pid >/dev/null && return
    sleep 1
  done
  tail -n 30 "$LOG" >&2
  die "the hub did not start within 120 s (log: $LOG)"
}

[ -e "$SITE" ] || site_file >/dev/null  # a missing or bad HUB_DOMAIN stops here, before anything
if [ -n "$ROOT" ]; then
  write_configs
  exit 0
fi

[ "$(id -u)" = 0 ] || die "run as root: the hub runs as root (it starts each user's server as that user)"

say "the host: scripts/quickstart.sh (Docker + gVisor, the kernel image, $VENV, configurable-http-proxy)"
bash scripts/quickstart.sh

say "the kernelspec for every user: /usr/local/share/jupyter/kernels/sandbox-python"
# The students' own notebook folder is copied into the kernel's home (a grader's kernel
# must not: docs/nbgrader.md); no warm pool; gVisor's ptrace platform (docs/jupyterhub.md).
"$VENV/bin/sandbox-kernel" install --prefix /usr/local --replace --backend runsc \
  --name sandbox-python --pool-size 0 --platform ptrace --copy-in-notebook-folder

write_configs

say "who may log in: the group $GROUP (c.LocalAuthenticator.allowed_groups)"
getent group "$GROUP" >/dev/null || groupadd "$GROUP"

start_service

public=$(sed -n 's/^c.JupyterHub.subdomain_host = "\(.*\)"$/\1/p' "$SITE")
cat <<EOF

The hub: ${public:-see c.JupyterHub.subdomain_host in $SITE}/hub/login
(this host's values, such as its domain and address: $SITE)

Add a student (a Unix account in the group $GROUP; they log in with this password):
  useradd --create-home --groups $GROUP NAME && passwd NAME
An existing account: usermod --append --groups $GROUP NAME

Stop:    $STOP
Restart: $RESTART
Log:     $LOGS
EOF
