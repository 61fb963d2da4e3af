"""The ``sandbox-kernel`` command.

Exit codes: 0 success, 1 the operation failed (the message says how to fix
it), 2 bad usage.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import resources
from typing import Any

from ..backends.registry import BACKENDS, DEFAULT_BACKEND, default_kernel_name
from ..errors import SandboxError
from ..image.recipe import DEFAULT_IMAGE


def _add_policy_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sandbox policy (validated before anything is written)")
    g.add_argument("--image", help=f"kernel image (default {DEFAULT_IMAGE})")
    g.add_argument("--memory", dest="memory_limit", help="memory cap, e.g. 2g")
    g.add_argument("--cpus", dest="cpu_limit", type=float, help="CPU cap, e.g. 1 or 0.5")
    g.add_argument(
        "--nproc", dest="nproc_limit", type=int, help="processes per sandbox (RLIMIT_NPROC)"
    )
    g.add_argument("--pids", dest="pids_limit", type=int, help="host pids cgroup backstop")
    g.add_argument("--tmp-size", dest="tmp_size", help="size cap of /tmp, e.g. 256m")
    g.add_argument("--home-size", dest="home_size", help="size cap of the home folder, e.g. 512m")
    g.add_argument(
        "--env-allow",
        dest="env_allow",
        action="append",
        metavar="NAME",
        help="pass this server environment variable into the sandbox (repeatable)",
    )
    g.add_argument("--launch-timeout", dest="launch_timeout", type=float, help="seconds")
    g.add_argument(
        "--pool-size",
        dest="pool_size",
        type=int,
        help="sandboxes kept warm for this kernelspec (default 1, 0 disables)",
    )
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        help="isolation backend (default docker = gVisor); runsc is gVisor without Docker (as "
        "root, or rootless for an ordinary user); docker-runc, bwrap and firejail are weaker "
        "tiers that share the host's kernel (docs/backends.md)",
    )
    g.add_argument(
        "--accept-unenforced",
        dest="accept_unenforced",
        action="append",
        metavar="PROPERTY",
        help="DANGEROUS (runsc/bwrap/firejail): let the backend leave PROPERTY unenforced "
        "(repeatable)",
    )
    g.add_argument("--rootfs", help="runsc/bwrap/firejail: kernel root filesystem directory")
    x = p.add_argument_group("deliberate exchanges (ports and files; see docs/exchange.md)")
    x.add_argument(
        "--expose",
        dest="expose_ports",
        action="append",
        metavar="[HOST:]PORT",
        help="make sandbox port PORT reachable at host 127.0.0.1:HOST (any free port if "
        "omitted) (repeatable)",
    )
    x.add_argument(
        "--max-runtime-ports",
        dest="max_runtime_ports",
        type=int,
        help="ports the kernel may expose itself with sandboxed.expose() (default 4, 0 disables)",
    )
    x.add_argument(
        "--copy-in",
        dest="copy_in",
        action="append",
        metavar="PATH",
        help="host file or folder copied into the sandbox's home at each start; relative "
        "paths are relative to the notebook's folder (repeatable)",
    )
    x.add_argument("--copy-in-limit", dest="copy_in_limit", help="most bytes copied in (64m)")
    x.add_argument(
        "--export-limit",
        dest="export_limit",
        help="most bytes the kernel may export with sandboxed.export() (64m; 0 disables)",
    )
    x.add_argument("--export-dir", dest="export_dir", help="folder for exported files")
    g.add_argument("--runtime", help="Docker runtime (default runsc = gVisor)")
    g.add_argument(
        "--allow-weaker-runtime",
        dest="allow_weaker_runtime",
        action="store_true",
        default=None,
        help="DANGEROUS: allow running without gVisor",
    )


_POLICY_KEYS = (
    "backend",
    "accept_unenforced",
    "rootfs",
    "image",
    "memory_limit",
    "cpu_limit",
    "nproc_limit",
    "pids_limit",
    "tmp_size",
    "home_size",
    "env_allow",
    "launch_timeout",
    "pool_size",
    "runtime",
    "allow_weaker_runtime",
    "expose_ports",
    "max_runtime_ports",
    "copy_in",
    "copy_in_limit",
    "export_limit",
    "export_dir",
)


def cmd_install(args: argparse.Namespace) -> int:
    from ..kernelspec import build_kernelspec, install_kernelspec

    config: dict[str, Any] = {
        k: getattr(args, k) for k in _POLICY_KEYS if getattr(args, k) is not None
    }
    config.setdefault("image", DEFAULT_IMAGE)
    spec = build_kernelspec(config, display_name=args.display_name)
    prefix = sys.prefix if args.sys_prefix else args.prefix
    name = args.name or default_kernel_name(config.get("backend", DEFAULT_BACKEND))
    path, changed = install_kernelspec(
        spec, name, user=args.user, prefix=prefix, replace=args.replace
    )
    print(f"{'installed' if changed else 'already installed'}: kernelspec {name!r} in {path}")
    return 0


def cmd_image_build(args: argparse.Namespace) -> int:
    from ..image.build import build_image
    from ..image.recipe import ImageRecipe

    recipe = ImageRecipe(extra_python_packages=tuple(args.extra_package or ()))
    built = build_image(
        args.image,
        recipe=recipe,
        mirror=args.mirror,
        force=args.force,
        keep_rootfs=args.keep_rootfs,
        rootfs_only=args.rootfs_only,
    )
    if not built:
        print(f"{args.image} is up to date (recipe {recipe.digest()}); --force rebuilds it")
    return 0


def cmd_image_export_rootfs(args: argparse.Namespace) -> int:
    from ..image.rootfs import export_rootfs

    path, exported = export_rootfs(args.image)
    print(f"{'exported' if exported else 'up to date'}: {args.image} root filesystem at {path}")
    return 0


def cmd_setup_host(args: argparse.Namespace) -> int:
    script = resources.files("sandbox_kernel.host").joinpath("setup_host.sh")
    with resources.as_file(script) as path:
        # One exit-code convention for every command: the script's own code is in its output.
        return 0 if subprocess.call(["bash", str(path)]) == 0 else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from ..doctor import run_doctor

    progress = None if args.json else (lambda msg: print(f"... {msg}", file=sys.stderr))
    report = run_doctor(args.image, progress=progress, backend=args.backend)
    print(report.to_json() if args.json else report.to_text())
    return 0 if report.ok else 1


def cmd_ps(args: argparse.Namespace) -> int:
    from ..backends import runsc
    from ..backends.docker import sandbox_table

    rows: list[dict[str, Any]] = []
    try:
        rows = [{**r, "backend": "docker"} for r in sandbox_table()]
    except SandboxError as exc:  # e.g. an ordinary user without the Docker socket
        print(f"sandbox-kernel: note: Docker sandboxes not listed: {exc}", file=sys.stderr)
    rows += runsc.sandbox_table()  # this user's sandboxes of the runsc backend
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'NAME':<40} {'BACKEND':<7} {'KERNEL ID':<36} {'POOL':<4} {'UP':>8} {'MEMORY':>10}"
        f" {'CPU':>6}"
    )
    for r in rows:
        pooled = "yes" if r["pooled"] else ""
        print(
            f"{r['name']:<40} {r['backend']:<7} {r['kernel_id'] or '-':<36} {pooled:<4}"
            f" {r['uptime_s']:>7.0f}s {r['memory_mib']:>7.0f}MiB {r['cpu_percent']:>5.1f}%"
        )
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from ..backends.cgroups import remove_empty
    from ..backends.docker import DockerBackend
    from ..backends.runsc import RunscBackend

    removed: list[str] = []
    try:
        removed = DockerBackend().remove_orphans()
    except SandboxError as exc:  # e.g. an ordinary user without the Docker socket
        print(f"sandbox-kernel: note: Docker sandboxes not checked: {exc}", file=sys.stderr)
    removed += RunscBackend().remove_orphans()  # this user's runsc sandboxes, bundles, cgroups
    stale = remove_empty()
    if stale:
        print(f"removed the cgroups of {len(stale)} ended bwrap/firejail sandbox(es)")
    print(f"removed {len(removed)} sandbox(es) left by dead Jupyter processes" +
          (": " + ", ".join(removed) if removed else ""))  # fmt: skip
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .run import run_notebook

    return run_notebook(
        args.notebook, kernel_name=args.kernel, output=args.output, timeout=args.timeout
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sandbox-kernel",
        description="Jupyter kernels in a gVisor sandbox: no host files, no network.",
        epilog="exit status: 0 success; 1 failure (the message names the fix; doctor: a check "
        "failed; run: a cell failed); 2 bad command line; 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("install", help="install a kernelspec that uses the sandbox provisioner")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument("--sys-prefix", action="store_true", help=f"install into {sys.prefix}")
    where.add_argument("--prefix", help="install into PREFIX/share/jupyter/kernels")
    p.add_argument(
        "--name", help="kernel name (default sandbox-python, sandbox-python-<backend> otherwise)"
    )
    p.add_argument(
        "--display-name", help="default: 'Python 3 (sandboxed)', naming the tier of other backends"
    )
    p.add_argument(
        "--replace", action="store_true", help="overwrite a different existing kernelspec"
    )
    _add_policy_options(p)
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("image", help="kernel images")
    isub = p.add_subparsers(dest="image_command", required=True)
    b = isub.add_parser("build", help="build the default image without a registry (needs root)")
    b.add_argument("--image", default=DEFAULT_IMAGE)
    b.add_argument("--force", action="store_true", help="rebuild even if up to date")
    b.add_argument("--mirror", help="Debian mirror URL (default: the one apt uses)")
    b.add_argument(
        "--extra-package",
        action="append",
        metavar="PIP_SPEC",
        help="another Python package (wheel) for the image (repeatable)",
    )
    b.add_argument("--keep-rootfs", action="store_true", help=argparse.SUPPRESS)
    b.add_argument(
        "--rootfs-only",
        action="store_true",
        help="no Docker: build only the root filesystem directory for the bwrap/firejail "
        "backends (what `image export-rootfs` makes from the image)",
    )
    b.set_defaults(func=cmd_image_build)
    e = isub.add_parser(
        "export-rootfs",
        help="export the image into a directory for the bwrap/firejail backends (root, Docker)",
    )
    e.add_argument("--image", default=DEFAULT_IMAGE)
    e.set_defaults(func=cmd_image_export_rootfs)

    p = sub.add_parser(
        "setup-host", help="install Docker + gVisor (runsc) and start dockerd (root)"
    )
    p.set_defaults(func=cmd_setup_host)

    p = sub.add_parser("doctor", help="check that this host really sandboxes kernels")
    p.add_argument("--image", default=DEFAULT_IMAGE, help=f"kernel image (default {DEFAULT_IMAGE})")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument(
        "--backend", choices=BACKENDS, default=DEFAULT_BACKEND, help="isolation backend to check"
    )
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser(
        "ps",
        help="list running sandboxes: kernel id, uptime, memory, CPU (Docker's, and this "
        "user's runsc sandboxes)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("gc", help="remove sandboxes left behind by Jupyter processes that died")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("run", help="execute a notebook in a sandboxed kernel")
    p.add_argument("notebook")
    p.add_argument(
        "--kernel", default="sandbox-python", help="kernel name (default sandbox-python)"
    )
    p.add_argument("--output", help="write the executed notebook here")
    p.add_argument("--timeout", type=float, default=600, help="seconds per cell")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SandboxError as exc:
        print(f"sandbox-kernel: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
