"""Build the default kernel image without a registry.

Called by ``sandbox-kernel image build``. Steps: debootstrap a minimal Debian
rootfs from the mirror apt already uses, install the Python stack as wheels
with ``pip --target`` (the host's pip, run for the rootfs's Python version and
platform), slim it, pre-compile bytecode (the sandbox's rootfs is read-only, so
nothing could be cached at run time), pre-build matplotlib's font cache into
``/etc/skel`` (the agent copies it into the fresh tmpfs home), then
``docker import``.

This runs as root on the host (debootstrap and chroot need it); it is a CLI
step, never called from the provisioner.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import SandboxError
from .recipe import (
    DEFAULT_IMAGE,
    NO_PIP_MESSAGE,
    RECIPE_LABEL,
    SANDBOX_HOME,
    SANDBOX_UID,
    ImageRecipe,
    apt_mirror_from_sources,
    debian_arch,
    wheel_platforms,
)
from .rootfs import write_neutral_etc

Progress = Callable[[int, int, str], None]

_SLIM_PATHS = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/cache/debconf/templates.dat-old",
    "var/log",
)


def print_progress(step: int, total: int, what: str) -> None:
    width = 24
    filled = width * step // total
    bar = "#" * filled + "-" * (width - filled)
    print(f"[{bar}] {step}/{total} {what}", file=sys.stderr, flush=True)


def detect_mirror() -> str:
    texts = []
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
        try:
            texts.append(Path(path).read_text())
        except OSError:
            continue
    mirror = apt_mirror_from_sources(texts)
    if not mirror:
        raise SandboxError(
            "cannot find a Debian mirror in /etc/apt; pass --mirror URL to "
            "`sandbox-kernel image build`"
        )
    return mirror


def _run(cmd: Sequence[str], log: Path, **kw: object) -> None:
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(list(cmd), stdout=out, stderr=subprocess.STDOUT, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise SandboxError(
            f"image build step failed: {' '.join(cmd[:3])} ... (exit {proc.returncode}); "
            f"full log: {log}\n" + "\n".join(tail)
        )


def image_is_current(image: str, recipe: ImageRecipe) -> bool:
    import docker

    try:
        labels = docker.from_env().images.get(image).labels or {}
    except Exception:
        return False
    return labels.get(RECIPE_LABEL) == recipe.digest()


def build_image(
    image: str = DEFAULT_IMAGE,
    *,
    recipe: ImageRecipe | None = None,
    mirror: str | None = None,
    force: bool = False,
    keep_rootfs: bool = False,
    rootfs_only: bool = False,
    progress: Progress = print_progress,
) -> bool:
    """Build ``image``; return False when an up-to-date image already exists.

    ``rootfs_only``: no Docker at all; the tree goes to the bwrap/firejail rootfs folder
    (``image/rootfs.py``) under the image's name instead of being imported."""
    from .rootfs import COMPLETE_MARK, ROOTFS_ROOT, install_tree_link

    recipe = recipe or ImageRecipe()
    key = f"recipe-{recipe.digest()[:16]}"
    if rootfs_only and not force and (ROOTFS_ROOT / key / COMPLETE_MARK).is_file():
        install_tree_link(image, key)
        return False
    if not rootfs_only and not force and image_is_current(image, recipe):
        return False
    if os.geteuid() != 0:
        raise SandboxError("building the image needs root (debootstrap and chroot); run with sudo")
    for tool in ("debootstrap", "chroot", "tar"):
        if shutil.which(tool) is None:
            raise SandboxError(
                f"`{tool}` is missing; run `sudo sandbox-kernel setup-host` "
                "(or apt-get install debootstrap)"
            )
    mirror = mirror or detect_mirror()
    workdir = Path(tempfile.mkdtemp(prefix="sandbox-kernel-image-", dir="/var/tmp"))
    builder = _RootfsBuilder(workdir, recipe)
    steps: list[tuple[str, Callable[[], None]]] = [
        (
            f"debootstrap {recipe.suite} (minbase) from {mirror}; log: {builder.log}",
            lambda: builder.debootstrap(mirror),
        ),
        ("installing " + ", ".join(recipe.all_python_packages), builder.install_wheels),
        ("slimming the rootfs", builder.slim),
        ("creating the sandbox user", builder.add_user),
        ("pip, python3 -m pip and %pip: explain that the sandbox has no network", builder.no_pip),
        ("pre-compiling bytecode (the rootfs is read-only at run time)", builder.compile_bytecode),
        ("pre-building matplotlib's font cache into /etc/skel", builder.font_cache),
    ]
    if rootfs_only:
        ROOTFS_ROOT.mkdir(parents=True, exist_ok=True)
        final = ROOTFS_ROOT / key
        steps.append(
            (f"installing the rootfs as {final}", lambda: _install_rootfs(builder, image, key))
        )
    else:
        steps.append((f"importing as {image}", lambda: builder.docker_import(image)))
    started = time.monotonic()
    try:
        for i, (what, step) in enumerate(steps, 1):
            progress(i - 1, len(steps), what)
            step()
        if rootfs_only:
            progress(len(steps), len(steps), f"done: {ROOTFS_ROOT / key}")
            return True
        import docker

        size = docker.from_env().images.get(image).attrs.get("Size", 0)
        progress(
            len(steps),
            len(steps),
            f"done: {image}, {size / 2**20:.0f} MiB, {time.monotonic() - started:.0f} s",
        )
        return True
    finally:
        if keep_rootfs:
            print(f"rootfs kept at {builder.rootfs}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _install_rootfs(builder: _RootfsBuilder, image: str, key: str) -> None:
    """Move the finished tree into the rootfs folder (same filesystem as /var/tmp, usually),
    with the export's normalisation: no setuid/setgid bits, no device nodes."""
    from .rootfs import ROOTFS_ROOT, install_tree, make_firejail_tree

    tree = Path(tempfile.mkdtemp(prefix=".build-", dir=ROOTFS_ROOT))
    os.rmdir(tree)
    shutil.move(str(builder.rootfs), tree)
    for path in [tree, *tree.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.lstat().st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            path.unlink()
        elif mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))
    os.chmod(tree / "tmp", 0o1777)
    make_firejail_tree(install_tree(tree, image, key))


class _RootfsBuilder:
    """The build steps, in order, on one rootfs folder."""

    def __init__(self, workdir: Path, recipe: ImageRecipe) -> None:
        self.workdir = workdir
        self.recipe = recipe
        self.rootfs = workdir / "rootfs"
        self.log = workdir / "build.log"
        self.site = self.rootfs / f"usr/local/lib/python{recipe.python_version}/dist-packages"
        self.chroot = shutil.which("chroot") or "chroot"
        self.chroot_env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
        }

    def debootstrap(self, mirror: str) -> None:
        r = self.recipe
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--arch={debian_arch(platform.machine())}",
                f"--include={','.join(r.debian_packages)}",
                r.suite,
                str(self.rootfs),
                mirror,
            ],
            self.log,
        )

    def install_wheels(self) -> None:
        self.site.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--no-cache-dir"]
        pip += ["--target", str(self.site), "--only-binary=:all:", "--implementation", "cp"]
        pip += ["--python-version", self.recipe.python_version]
        for tag in wheel_platforms(platform.machine()):
            pip += ["--platform", tag]
        _run(pip + list(self.recipe.all_python_packages), self.log)
        shutil.rmtree(self.site / "bin", ignore_errors=True)

    def slim(self) -> None:
        for rel in _SLIM_PATHS:
            target = self.rootfs / rel
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir()
        for tests in self.site.glob("*/tests"):
            if tests.is_dir() and tests.parent.name in {"numpy", "matplotlib", "pandas"}:
                shutil.rmtree(tests)
        # No setuid/setgid programs: no_new_privs already defeats them; this removes
        # the attack surface altogether (su, mount, passwd, ...).
        for dirpath, _dirs, files in os.walk(self.rootfs):
            for name in files:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                    os.chmod(path, st.st_mode & ~(stat.S_ISUID | stat.S_ISGID))

    def add_user(self) -> None:
        with (self.rootfs / "etc/passwd").open("a") as f:
            f.write(f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:{SANDBOX_HOME}:/bin/sh\n")
        with (self.rootfs / "etc/group").open("a") as f:
            f.write(f"sandbox:x:{SANDBOX_UID}:\n")
        home = self.rootfs / SANDBOX_HOME.lstrip("/")
        home.mkdir(parents=True, exist_ok=True)
        os.chown(home, SANDBOX_UID, SANDBOX_UID)
        (self.rootfs / "etc/sandbox-kernel-image").write_text(self.recipe.digest() + "\n")
        write_neutral_etc(self.rootfs)  # debootstrap copied the building host's resolver

    def compile_bytecode(self) -> None:
        v = self.recipe.python_version
        _run(
            [
                self.chroot,
                str(self.rootfs),
                "python3",
                "-m",
                "compileall",
                "-q",
                "-j",
                "1",
                f"/usr/lib/python{v}",
                f"/usr/local/lib/python{v}",
            ],
            self.log,
            env=self.chroot_env,
        )

    def font_cache(self) -> None:
        (self.rootfs / "etc/skel/.cache/matplotlib").mkdir(parents=True, exist_ok=True)
        _run(
            [self.chroot, str(self.rootfs), "python3", "-c", "import matplotlib.font_manager"],
            self.log,
            env={**self.chroot_env, "MPLCONFIGDIR": "/etc/skel/.cache/matplotlib"},
        )

    def no_pip(self) -> None:
        """``pip``/``pip3`` on PATH, a ``pip`` module for ``python3 -m pip``, and IPython's
        ``%pip``/``%conda`` magics in the home skeleton: each says why nothing installs
        here (:data:`NO_PIP_MESSAGE`) and fails, instead of "No module named pip" and a
        cell that succeeds."""
        message = json.dumps(NO_PIP_MESSAGE)
        for name in ("pip", "pip3"):
            script = self.rootfs / "usr/local/bin" / name
            script.parent.mkdir(parents=True, exist_ok=True)
            script.write_text(f"#!/bin/sh\necho {shlex.quote(NO_PIP_MESSAGE)} >&2\nexit 1\n")
            script.chmod(0o755)
        module = self.site / "pip"
        module.mkdir(exist_ok=True)
        (module / "__init__.py").write_text(f'"""Not pip: {NO_PIP_MESSAGE}"""\n')
        (module / "__main__.py").write_text(f"import sys\n\nsys.exit({message})\n")
        startup = self.rootfs / "etc/skel/.ipython/profile_default/startup"
        startup.mkdir(parents=True, exist_ok=True)
        (startup / "00-sandbox-kernel-no-pip.py").write_text(
            "def _no_pip(line):\n"
            "    from IPython.core.error import UsageError  # shown without a traceback\n\n"
            f"    raise UsageError({message})\n\n\n"
            "for _name in ('pip', 'conda', 'mamba', 'micromamba'):\n"
            "    get_ipython().register_magic_function(_no_pip, 'line', _name)\n"
            "del _name, _no_pip\n"
        )

    def docker_import(self, image: str) -> None:
        import docker

        tarball = self.workdir / "rootfs.tar"
        _run(["tar", "--numeric-owner", "-C", str(self.rootfs), "-cf", str(tarball), "."], self.log)
        repo, tag = split_image_tag(image)
        digest = self.recipe.digest()
        changes = [
            f"USER {SANDBOX_UID}:{SANDBOX_UID}",
            f"WORKDIR {SANDBOX_HOME}",
            "ENV PATH=/usr/local/bin:/usr/bin:/bin",
            "ENV LANG=C.UTF-8",
            f"ENV HOME={SANDBOX_HOME}",
            'CMD ["python3"]',
            f"LABEL {RECIPE_LABEL}={digest}",
        ]
        docker.from_env().api.import_image_from_file(
            str(tarball), repository=repo, tag=tag, changes=changes
        )
        tarball.unlink()
        if not image_is_current(image, self.recipe):
            raise SandboxError(f"docker import finished but {image} lacks the recipe label")


def split_image_tag(image: str) -> tuple[str, str]:
    """``repo[:tag]`` -> (repo, tag); a registry port is not a tag."""
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, _, tag = image.rpartition(":")
        return repo, tag
    return image, "latest"
