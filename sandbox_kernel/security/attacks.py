"""The sandbox's attack catalogue: each :class:`Attack` is a Python program run in a kernel.

Contract of ``Attack.code``
    Runs as one cell in a sandboxed kernel (any Python >= 3.8, standard library only)
    and prints exactly one final line: a JSON object ``{"blocked": bool, "detail": str}``.
    ``blocked`` is decided from what the attempt observed (an exception with the
    expected errno, an empty listing, a value different from the host's), never
    hard-coded. Each cell cleans up what it creates and changes no state that a later
    attack depends on, so one kernel can run the whole catalogue.

``needs``
    Names of parameters only the host can supply (a marker path it planted, the
    address of a live test host, the host's hostname...). Attacks with no ``needs``
    are self-contained: ``sandbox-kernel doctor`` runs those as they are.

The programs (``programs/``, package data read with :mod:`importlib.resources`)
    One real Python file per attack, named by its id (``fs-host-markers`` is
    ``programs/fs_host_markers.py``), checked by ruff for Python 3.8 like the code in
    ``inside/``. Files starting with ``_`` are preludes, ``children/`` holds programs an
    attack runs in a child process. ``Attack.code`` is a program's text with its marked
    top-level statements resolved, so that it stands alone (it never imports
    sandbox_kernel) while ruff still resolves every name:

    - ``from ._prelude import _os, _report  # inlined``: replaced by the prelude's text,
      once per program (a prelude may inline another one).
    - ``from .children import ns_child as _NS_CHILD  # embedded``: replaced by
      ``_NS_CHILD = '''<that program's text>'''``, for a program run in a child process.
    - ``res: dict = {}  # provided`` (or an import): dropped; it tells the linter what
      the program that runs this one supplies (a child's attempt gets ``res`` from it).
    - ``NEEDS = {}  # filled by render()``: :func:`render` replaces it with the dict of
      the values of ``needs``, which the program reads as ``NEEDS["name"]``.

    Any other ``# inlined``/``# embedded``/``# provided`` mark is refused at import.

The table (``ATTACKS`` below)
    id, what the attack protects, title and needs stay here, in one table a reviewer
    reads top to bottom (as docs/security.md does); a program file holds only code. The
    preludes a program uses are named by its own ``# inlined`` imports, which ruff needs
    anyway, so they are not repeated here where they could drift.

Network safety: attacks send traffic only to loopback or to addresses the caller
passes in (its own test hosts and this machine's own addresses). Reachability of
foreign addresses is checked with a UDP ``connect()``, which is a route lookup and
sends no packet.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from importlib import resources

PROTECTS = ("host filesystem", "network", "privileges", "information")
_FS, _NET, _PRIV, _INFO = PROTECTS


@dataclass(frozen=True)
class Attack:
    """One attempt to get out of the sandbox, and how to tell whether it was stopped."""

    id: str
    protects: str  # one of PROTECTS
    title: str
    code: str  # the whole program (see the module's docstring); needs filled by render()
    needs: tuple[str, ...] = ()


# The line of a program that render() fills (exactly this text, alone on its line).
NEEDS_LINE = "NEEDS = {}  # filled by render()"
_NEEDS_LINE = re.compile("^" + re.escape(NEEDS_LINE) + "$", re.MULTILINE)


def _literal(name: str, value: object) -> str:
    text = repr(value)
    try:
        same = ast.literal_eval(text) == value
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        same = False
    if not same:
        raise TypeError(f"parameter {name!r}: {type(value).__name__} is not a Python literal")
    return text


def render(attack: Attack, **params: object) -> str:
    """``attack.code`` with its ``NEEDS`` line holding the literal (``repr``) of each value.

    Raises ``TypeError`` when a needed parameter is missing, an unknown one is given,
    or a value is not a plain literal (str, bytes, int, float, bool, None, and lists,
    tuples and dicts of those). Called by the security tests; ``doctor`` runs only
    attacks without needs, whose ``code`` is complete.
    """
    missing = [n for n in attack.needs if n not in params]
    unknown = sorted(set(params) - set(attack.needs))
    if missing or unknown:
        raise TypeError(
            f"attack {attack.id!r} needs {list(attack.needs)}; "
            f"missing {missing}, unexpected {unknown}"
        )
    if not attack.needs:
        return attack.code
    filled = ", ".join(f"{name!r}: {_literal(name, params[name])}" for name in attack.needs)
    code, count = _NEEDS_LINE.subn(lambda _: "NEEDS = {" + filled + "}", attack.code)
    if count != 1:
        raise ValueError(f"attack {attack.id!r}: {count} lines {NEEDS_LINE!r}, expected one")
    return code


def by_id(attack_id: str) -> Attack:
    for attack in ATTACKS:
        if attack.id == attack_id:
            return attack
    raise KeyError(attack_id)


# --------------------------------------------------------------------------------------
# Loading the programs

PROGRAMS = resources.files(__name__.rpartition(".")[0]) / "programs"
_MARK = re.compile(r"#\s*(inlined|embedded|provided|filled by render\(\))\s*$")


def program_file(attack_id: str) -> str:
    """The file of an attack's program, relative to ``programs/``."""
    return attack_id.replace("-", "_") + ".py"


def _string(text: str) -> str:
    """A Python literal of ``text``: a raw triple-quoted string where one can hold it."""
    for literal in ("r'''" + text + "'''", repr(text)):
        try:
            if ast.literal_eval(literal) == text:
                return literal
        except (ValueError, SyntaxError):
            pass
    raise AssertionError("repr() is always a literal")  # pragma: no cover


def assemble(path: str, inlined: set[str] | None = None, *, top: bool = True) -> str:
    """The program ``programs/<path>`` with its marked statements resolved (see the
    module's docstring). ``inlined``: the preludes already in the program (shared by
    the recursion). Raises ``ValueError`` naming the file and line of a bad mark."""
    inlined = set() if inlined is None else inlined
    folder = path.rpartition("/")[0]
    text = (PROGRAMS / path).read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    marks: dict[int, str] = {}
    for number, line in enumerate(lines, 1):
        found = _MARK.search(line)
        if found:
            marks[number] = found.group(1)

    def bad(node: ast.stmt, why: str) -> ValueError:
        return ValueError(f"programs/{path}, line {node.lineno}: {why}")

    for node in ast.parse(text, path).body:
        kind = marks.pop(node.lineno, None)
        if kind is None:
            continue
        replacement = ""
        if kind == "filled by render()":
            if not top or lines[node.lineno - 1].rstrip("\n") != NEEDS_LINE:
                raise bad(node, f"only an attack's program may hold {NEEDS_LINE!r}, exactly")
            continue
        if kind in ("inlined", "embedded"):
            if not (isinstance(node, ast.ImportFrom) and node.level == 1 and node.module):
                raise bad(node, f"'# {kind}' marks a 'from .module import ...' statement")
            target = "/".join(filter(None, [folder, *node.module.split(".")]))
            if kind == "inlined":
                if target + ".py" not in inlined:
                    inlined.add(target + ".py")
                    replacement = assemble(target + ".py", inlined, top=False)
            else:
                if len(node.names) != 1 or not node.names[0].asname:
                    raise bad(node, "'# embedded' imports one program 'as NAME'")
                child = f"{target}/{node.names[0].name}.py"
                replacement = f"{node.names[0].asname} = {_string(assemble(child, top=False))}\n"
        assert node.end_lineno is not None
        lines[node.lineno - 1 : node.end_lineno] = [replacement] + [""] * (
            node.end_lineno - node.lineno
        )
    if marks:
        number, kind = min(marks.items())
        raise ValueError(
            f"programs/{path}, line {number}: '# {kind}' must end the first line of a "
            "top-level statement"
        )
    return "".join(lines)


def _attack(id: str, protects: str, title: str, needs: tuple[str, ...] = ()) -> Attack:
    assert protects in PROTECTS, protects
    code = assemble(program_file(id))
    if bool(needs) != bool(_NEEDS_LINE.search(code)):
        raise ValueError(f"programs/{program_file(id)}: a {NEEDS_LINE!r} line iff needs")
    return Attack(id=id, protects=protects, title=title, code=code, needs=needs)


# --------------------------------------------------------------------------------------
# The catalogue

ATTACKS: tuple[Attack, ...] = (
    # host filesystem
    _attack(
        "fs-host-markers",
        _FS,
        "files the host planted (in /tmp, home, the checkout, /dev/shm...) are not visible",
        needs=("paths",),
    ),
    _attack(
        "fs-proc-root",
        _FS,
        "/proc/<pid>/root of every visible process is the sandbox's own root (or is denied)",
    ),
    _attack(
        "fs-mountinfo",
        _FS,
        "the mount table names no host paths (no /var/lib/docker, overlay dirs, /work, /root)",
    ),
    _attack(
        "fs-mount-census",
        _FS,
        "every mount is the image root, a virtual filesystem, a tmpfs of the sandbox's "
        "own (size-capped where it is writable) or a file the container engine generated",
    ),
    _attack(
        "fs-host-sockets",
        _FS,
        "no host unix socket is reachable (Docker, containerd, D-Bus, systemd...)",
    ),
    _attack(
        "fs-symlink-escape",
        _FS,
        "symlinks from /tmp to /etc/passwd and ../../ resolve inside the sandbox",
    ),
    _attack(
        "fs-dotdot-traversal",
        _FS,
        "'..' traversal from /tmp and the home folder stops at the sandbox's root",
    ),
    _attack(
        "fs-root-read-only",
        _FS,
        "the image root is mounted read-only (/, /usr, /etc, /var, the standard library "
        "and site-packages sit on read-only mounts)",
    ),
    _attack(
        "fs-write-outside-tmpfs",
        _FS,
        "nothing outside the tmpfs mounts is writable (/, /usr, /etc, /var, /opt, site-packages)",
    ),
    _attack(
        "fs-tmpfs-caps",
        _FS,
        "/tmp and the home folder are size-capped tmpfs mounts (no more than configured)",
        needs=("tmp_bytes", "home_bytes"),
    ),
    _attack(
        "fs-noexec-tmpfs",
        _FS,
        "binaries copied into the writable mounts (/tmp, home, /dev/shm) cannot be "
        "executed (execve)",
    ),
    _attack(
        "fs-noexec-loader",
        _FS,
        "a binary copied into the writable mounts (mode 0644) cannot be run through the "
        "dynamic loader, nor mapped executable (noexec covers mmap, not only execve)",
    ),
    _attack(
        "fs-noexec-memory",
        _FS,
        "native code that never touches a noexec mount cannot be run: an ELF in a memfd "
        "(execve), code in anonymous executable memory",
    ),
    _attack(
        "fs-proc-links",
        _FS,
        "no process's open files, working directory or executable (/proc/<pid>/fd, cwd, "
        "exe) lead to a file outside the sandbox's own tree",
    ),
    # network
    _attack("net-only-loopback", _NET, "the only network interface is 'lo', with no route off it"),
    _attack("net-raw-socket", _NET, "raw IP sockets cannot be opened (no spoofing, no sniffing)"),
    _attack("net-packet-socket", _NET, "packet (link-layer) sockets cannot be opened"),
    _attack(
        "net-interface-config",
        _NET,
        "no TUN device is there to open, and no interface can be created or configured "
        "(TUNSETIFF, netlink RTM_NEWADDR)",
    ),
    _attack(
        "net-no-route-foreign",
        _NET,
        "no route to the metadata service, private ranges, the internet or IPv6 (route "
        "lookup only)",
    ),
    _attack(
        "net-dns-servers-unreachable",
        _NET,
        "the nameservers in /etc/resolv.conf cannot be reached (no DNS exfiltration)",
    ),
    _attack(
        "net-lan-host",
        _NET,
        "a live LAN host cannot be reached over TCP, UDP, IPv4, IPv6 or IPv4-mapped IPv6",
        needs=("addr", "addr6", "port"),
    ),
    _attack(
        "net-host-addresses",
        _NET,
        "services on the host's own addresses (eth0, docker0...) cannot be reached",
        needs=("addrs", "port"),
    ),
    _attack(
        "net-host-loopback",
        _NET,
        "services on the host's loopback (127.0.0.1, ::1, ::ffff:127.0.0.1) cannot be reached",
        needs=("port",),
    ),
    _attack(
        "net-dns-query",
        _NET,
        "a live DNS server on the LAN answers the host but not the sandbox (UDP and TCP)",
        needs=("server", "qname"),
    ),
    _attack(
        "net-abstract-unix",
        _NET,
        "an abstract unix socket of the host cannot be connected to",
        needs=("name",),
    ),
    _attack(
        "net-icmp-echo",
        _NET,
        "a live LAN host does not answer pings from the sandbox (IPv4 and IPv6)",
        needs=("addr", "addr6"),
    ),
    _attack(
        "net-userns-address",
        _NET,
        "a user namespace from a raw clone3() (uid 0 mapped, sharing the sandbox's "
        "network namespace) cannot add addresses or routes (netlink RTM_NEWADDR and "
        "RTM_NEWROUTE, IPv4 and IPv6; SIOCSIFADDR, SIOCADDRT)",
    ),
    _attack(
        "net-userns-tun",
        _NET,
        "a user namespace from a raw clone3() (uid 0 mapped, sharing the sandbox's "
        "network namespace) cannot create a TUN interface (/dev/net/tun or a node of its "
        "own, TUNSETIFF by ioctl and by raw syscall)",
    ),
    _attack(
        "net-userns-egress",
        _NET,
        "a user namespace from a raw clone3() (uid 0 mapped, sharing the sandbox's "
        "network namespace) reaches neither a live LAN host nor the host's loopback, "
        "after giving itself an address in the LAN's /24 (TCP, UDP, raw ICMP; IPv4 and "
        "IPv6)",
        needs=("addr", "addr6", "port", "loopback_port"),
    ),
    # privileges
    _attack(
        "priv-ids",
        _PRIV,
        "runs with no root uid or gid (real, effective, saved, supplementary)",
    ),
    _attack(
        "priv-capabilities",
        _PRIV,
        "the kernel's processes hold no capability (effective, permitted, bounding, "
        "ambient); only the agent, under another uid, may hold the few it needs to run "
        "the kernel",
    ),
    _attack(
        "priv-agent-pipe",
        _PRIV,
        "the kernel cannot open the agent's descriptors (its pipe to the host) through /proc",
    ),
    _attack(
        "priv-agent-signal",
        _PRIV,
        "the kernel cannot stop the agent (which would stall its pipe) with a signal",
    ),
    _attack(
        "priv-no-new-privs",
        _PRIV,
        "no_new_privs is set, in the kernel and in the processes it starts",
    ),
    _attack("priv-setuid-files", _PRIV, "no setuid or setgid file exists in the image"),
    _attack(
        "priv-su-mount-commands",
        _PRIV,
        "su, sudo and mount cannot be used to become root or mount anything",
    ),
    _attack(
        "priv-mount-syscall",
        _PRIV,
        "mount(2) and umount(2) are refused (new tmpfs, bind of /, remount of / read-"
        "write), and so is the new mount API (fsopen, fspick, open_tree, move_mount)",
    ),
    _attack(
        "priv-user-namespace",
        _PRIV,
        "a (single-threaded) process cannot create a user namespace to regain capabilities",
    ),
    _attack(
        "priv-namespaces",
        _PRIV,
        "no other namespace (mount, network, pid, uts, ipc, cgroup) can be created",
    ),
    _attack(
        "priv-userns-clone-flags",
        _PRIV,
        "even inside a user namespace entered by a raw clone3() (gVisor allows it; it "
        "holds capabilities there), clone() into a new namespace is refused by the "
        "seccomp rules",
    ),
    _attack(
        "priv-keyring",
        _PRIV,
        "no key can be stored in or read from a kernel keyring (keyrings are not namespaced)",
    ),
    _attack("priv-bpf", _PRIV, "bpf(2) is refused (map creation and socket-filter program load)"),
    _attack("priv-kernel-modules", _PRIV, "kernel modules cannot be loaded or removed"),
    _attack(
        "priv-ptrace-agent",
        _PRIV,
        "the agent (PID 1; the kernel's parent under firejail, whose init is PID 1) cannot "
        "be traced or have its memory read",
    ),
    _attack(
        "priv-mknod-device",
        _PRIV,
        "block and character device nodes cannot be created (mknod needs CAP_MKNOD)",
    ),
    _attack(
        "priv-device-nodes-inert",
        _PRIV,
        "device nodes made with mknod (if it is allowed at all) reach no disk, memory or KVM",
    ),
    _attack("priv-dev-listing", _PRIV, "/dev holds no disk, memory, KVM or other hardware node"),
    _attack(
        "priv-kernel-tunables",
        _PRIV,
        "kernel controls cannot be opened for writing (sysrq-trigger, core_pattern, /proc/sys...)",
    ),
    _attack(
        "priv-cgroup-escape",
        _PRIV,
        "cgroup controls cannot be changed (release_agent, limits, cgroup.procs, new cgroups)",
    ),
    _attack(
        "priv-setuid-root",
        _PRIV,
        "setuid(0), setgid(0), setresuid and setgroups([0]) are refused",
    ),
    _attack("priv-chroot", _PRIV, "chroot(2) is refused"),
    _attack(
        "priv-admin-syscalls",
        _PRIV,
        "administrative syscalls are refused (reboot, kexec, swapon, pivot_root, setns, "
        "sethostname, clock_settime, acct, iopl)",
    ),
    _attack(
        "priv-open-by-handle",
        _PRIV,
        "open_by_handle_at (the 'shocker' container escape) is refused",
    ),
    _attack(
        "priv-rlimits",
        _PRIV,
        "hard resource limits (processes, open files, core size) cannot be raised",
    ),
    _attack(
        "priv-kernel-attack-surface",
        _PRIV,
        "kernel interfaces with a record of privilege-escalation bugs are unavailable "
        "(perf_event_open, userfaultfd, io_uring)",
    ),
    _attack(
        "priv-userns-confined",
        _PRIV,
        "a user namespace entered with a raw clone3() (seccomp cannot inspect its flags),"
        " uid 0 mapped, gains nothing over the sandbox: mount, device nodes, chroot, "
        "packet and raw IP sockets",
    ),
    # information
    _attack(
        "info-hostname",
        _INFO,
        "the sandbox does not learn the host's hostname",
        needs=("host_hostname",),
    ),
    _attack(
        "info-kernel-release",
        _INFO,
        "the sandbox sees gVisor's kernel, not the host's release and version",
        needs=("host_release",),
    ),
    _attack(
        "info-host-identifiers",
        _INFO,
        "the host's boot id, machine id and kernel command line are not visible",
        needs=("host_boot_id", "host_machine_id", "host_cmdline"),
    ),
    _attack(
        "info-host-resolver",
        _INFO,
        "the sandbox's resolver configuration does not name the host's DNS servers",
        needs=("host_resolvers",),
    ),
    _attack(
        "info-server-env",
        _INFO,
        "a secret in the Jupyter server's environment does not reach the sandbox",
        needs=("token_hex",),
    ),
    _attack(
        "info-process-list",
        _INFO,
        "only the sandbox's own processes are visible (agent, kernel, its children)",
    ),
    _attack(
        "info-agent-proc",
        _INFO,
        "the agent's /proc files that Linux shows only to a process allowed to trace it "
        "(environ, auxv, maps, smaps, mem, the fd folder and its entries) are refused",
    ),
    _attack(
        "info-host-pids",
        _INFO,
        "host processes (the Jupyter server, dockerd) are neither visible nor signalable",
        needs=("pids",),
    ),
    _attack(
        "info-host-sockets",
        _INFO,
        "the host's listening sockets and unix sockets do not appear in /proc/net",
        needs=("port", "unix_names"),
    ),
)
