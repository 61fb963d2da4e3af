"""The ``sandbox-kernel`` command.

Exit codes: 0 success, 1 the operation failed (the message says how to fix
it), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from importlib import resources
from typing import Any

from ..backends.registry import BACKENDS, DEFAULT_BACKEND, default_kernel_name
from ..errors import SandboxError
from ..image.recipe import DEFAULT_IMAGE
from .flags import add_flags, from_flags


def cmd_install(args: argparse.Namespace) -> int:
    from ..batch import install_nbconvert_config
    from ..configured import configure
    from ..kernelspec import (
        NOTEBOOK_DEFAULT_NAME,
        beyond_host,
        build_kernelspec,
        install_kernelspec,
        install_sandbox_default,
    )

    config = from_flags(args)  # only what was given: the rest keeps its default
    prefix = sys.prefix if args.sys_prefix else args.prefix
    if args.host:
        return _install_host_kernel(args, config, prefix)
    spec = build_kernelspec(config, display_name=args.display_name)
    name = args.name or default_kernel_name(config.get("backend", DEFAULT_BACKEND))
    path, changed = install_kernelspec(
        spec, name, user=args.user, prefix=prefix, replace=args.replace
    )
    print(f"{'installed' if changed else 'already installed'}: kernelspec {name!r} in {path}")
    if name == NOTEBOOK_DEFAULT_NAME and prefix is not None:
        # ipykernel's wheel rewrites python3 on upgrade: the sandbox stays the default.
        pth, _ = install_sandbox_default(prefix)
        print(f"kernelspecs that name no provisioner run sandboxed in this environment ({pth})")
    # nbconvert --execute --allow-errors then keeps going after a limit stops a kernel.
    config_path = install_nbconvert_config(args.user, prefix)
    if config_path is not None:
        print(f"nbconvert: a kernel stopped by its limits is restarted ({config_path})")
    policy = configure(config).policy
    for warning in beyond_host(policy.memory_bytes, policy.cpus, _host_memory(), _host_cpus()):
        print(f"sandbox-kernel: warning: {warning}", file=sys.stderr)
    return 0


def _install_host_kernel(
    args: argparse.Namespace, config: dict[str, object], prefix: str | None
) -> int:
    """``install --host``: the explicit opt-out, a kernelspec that runs this Python's
    ipykernel on the host and names the local provisioner (where the sandbox is the
    default, one naming none would run sandboxed). Never under a name notebooks ask for."""
    from ..errors import SandboxError
    from ..kernelspec import (
        DEFAULT_KERNEL_NAME,
        NOTEBOOK_DEFAULT_NAME,
        host_kernelspec,
        install_kernelspec,
    )

    if config:
        raise SandboxError(f"--host runs no sandbox: drop {', '.join(sorted(config))}")
    if not args.name or args.name.lower() in (NOTEBOOK_DEFAULT_NAME, DEFAULT_KERNEL_NAME):
        raise SandboxError(
            "--host needs a --name of its own (e.g. python3-host): not "
            f"{NOTEBOOK_DEFAULT_NAME} or {DEFAULT_KERNEL_NAME}, which notebooks ask for"
        )
    spec = host_kernelspec(args.display_name or "Python 3 (HOST, NOT sandboxed)")
    path, changed = install_kernelspec(
        spec, args.name, user=args.user, prefix=prefix, replace=args.replace
    )
    done = "installed" if changed else "already installed"
    print(f"{done}: kernelspec {args.name!r} in {path}: the host's ipykernel, NOT sandboxed")
    return 0


def _host_memory() -> int:
    """Bytes of memory this host has (0 if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 0


def _host_cpus() -> int:
    return len(os.sched_getaffinity(0)) or (os.cpu_count() or 0)


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


def _per_backend(what: str) -> list[tuple[str, Callable[[], Any]]]:
    """(backend, its ``list_sandboxes``/``remove_orphans``), once per implementation
    (docker and docker-runc share one daemon)."""
    from ..backends.registry import BACKENDS, backend_class

    seen: dict[Any, str] = {}
    for name in BACKENDS:
        fn = getattr(backend_class(name), what)
        seen.setdefault(getattr(fn, "__func__", fn), name)
    return [(name, getattr(backend_class(name), what)) for name in seen.values()]


def cmd_ps(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    rows = []
    for backend, list_sandboxes in _per_backend("list_sandboxes"):
        try:
            rows += list_sandboxes()
        except SandboxError as exc:  # e.g. an ordinary user without the Docker socket
            print(f"sandbox-kernel: note: {backend} sandboxes not listed: {exc}", file=sys.stderr)
    if args.json:
        import json

        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    print(
        f"{'NAME':<44} {'BACKEND':<11} {'USER':<12} {'KERNEL ID':<36} {'POOL':<4} {'UP':>8}"
        f" {'MEMORY':>10} {'CPU':>6}"
    )
    for r in rows:
        if r.kind != "sandbox":
            continue
        cpu = f"{r.cpu_percent:>5.1f}%" if r.cpu_percent is not None else f"{'-':>6}"
        memory = f"{r.memory_mib:>7.0f}MiB" if r.memory_mib is not None else f"{'-':>10}"
        print(
            f"{r.name:<44} {r.backend:<11} {r.user or '-':<12} {r.kernel_id or '-':<36}"
            f" {'yes' if r.pooled else '':<4} {r.uptime_s:>7.0f}s {memory} {cpu}"
        )
    _print_kernelspecs()
    snapshots = [r for r in rows if r.kind == "snapshot"]
    if snapshots:
        print(
            f"\n{'WARM POOL SNAPSHOT':<44} {'BACKEND':<11} {'SERVER':>10} {'AGE':>8} {'DISK':>10}"
        )
        for r in snapshots:
            print(
                f"{r.name:<44} {r.backend:<11} {r.server_pid:>10} {r.uptime_s:>7.0f}s"
                f" {r.disk_mib:>7.0f}MiB"
            )
    return 0


def _print_kernelspecs() -> None:
    """The limits each kernelspec Jupyter here resolves a name to applies (what a new
    kernel of that name gets; doctor says the same of python3 and sandbox-python)."""
    from ..kernelspec import LIMIT_COLUMNS, effective_kernelspecs, effective_limits

    width = 9 * len(LIMIT_COLUMNS) - 1
    print(f"\n{'KERNELSPEC':<24} " + " ".join(f"{h:<8}" for _, h in LIMIT_COLUMNS) + " FOLDER")
    for name, (folder, config) in effective_kernelspecs().items():
        if config is None:
            print(f"{name:<24} {'NOT SANDBOXED: the host kernel':<{width}} {folder}")
            continue
        try:
            limits = effective_limits(config)
        except SandboxError as exc:  # a malformed spec: its kernels would be refused
            print(f"{name:<24} {f'REFUSED AT LAUNCH: {exc}':<{width}} {folder}")
            continue
        print(f"{name:<24} " + " ".join(f"{limits[k]:<8}" for k, _ in LIMIT_COLUMNS) + f" {folder}")


def cmd_gc(args: argparse.Namespace) -> int:
    """Exit 1 when a backend could not be looked at (a stopped daemon, a wrong DOCKER_HOST):
    leftovers may remain. A user who may not use Docker has no Docker sandboxes: a note."""
    from ..backends.cgroups import remove_empty
    from ..backends.docker import DockerForbidden

    removed: list[str] = []
    unchecked = 0
    for backend, remove_orphans in _per_backend("remove_orphans"):
        try:
            removed += remove_orphans()
        except DockerForbidden as exc:
            print(f"sandbox-kernel: note: {backend} sandboxes not checked: {exc}", file=sys.stderr)
        except SandboxError as exc:
            unchecked += 1
            print(f"sandbox-kernel: error: {backend} sandboxes not checked: {exc}", file=sys.stderr)
    stale = remove_empty()
    if stale:
        print(f"removed the cgroups of {len(stale)} ended bwrap/firejail sandbox(es)")
    print(f"removed {len(removed)} sandbox(es) left by dead Jupyter processes" +
          (": " + ", ".join(removed) if removed else ""))  # fmt: skip
    return 1 if unchecked else 0


def cmd_run(args: argparse.Namespace) -> int:
    from .run import run_notebook

    return run_notebook(
        args.notebook,
        kernel_name=args.kernel,
        output=args.output,
        timeout=args.timeout,
        allow_errors=args.allow_errors,
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
    p.add_argument(
        "--host",
        action="store_true",
        help="instead: this Python's ipykernel on the host, NOT sandboxed (needs its own --name)",
    )
    add_flags(p)
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
        help="list running sandboxes of every backend: kernel id, uptime, memory, CPU "
        "(Docker's, and this user's runsc, bubblewrap and firejail sandboxes)",
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
    p.add_argument(
        "--allow-errors",
        action="store_true",
        help="keep running the cells after one fails (the exit code is still 1)",
    )
    p.epilog = (
        "exit status: 0 every cell ran; 1 a cell failed (or the run could not start); "
        "2 bad command line; 3 the kernel was stopped by a limit (e.g. its memory: the "
        "reason is printed); 130 interrupted (the kernel is shut down first). The output "
        "notebook is written in every case."
    )
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
