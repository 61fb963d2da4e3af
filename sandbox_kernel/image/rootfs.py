"""Kernel root filesystems as plain directories, for the host-kernel backends.

bubblewrap and firejail do not run images: they bind a directory read-only as
the sandbox's ``/``. ``sandbox-kernel image export-rootfs`` (root, Docker)
exports the kernel image once into ``ROOTFS_ROOT/<image id>`` and points
``ROOTFS_ROOT/<image slug>`` at it; ``sandbox-kernel image build --rootfs-only``
builds the same tree with debootstrap and no Docker at all. The backends'
preflight calls :func:`rootfs_for` (pure lookup) and :func:`check_rootfs`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ..errors import SandboxError

ROOTFS_ROOT = Path(os.environ.get("SANDBOX_KERNEL_ROOTFS_ROOT", "/var/lib/sandbox-kernel/rootfs"))
COMPLETE_MARK = ".sandbox-kernel-rootfs"
EXPORT_HINT = "run `sudo sandbox-kernel image export-rootfs` (or `image build --rootfs-only`)"


def image_slug(image: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", image)


def rootfs_for(image: str, override: str = "") -> Path:
    """Where the rootfs of ``image`` lives (``override``: an operator-chosen directory)."""
    return Path(override) if override else ROOTFS_ROOT / image_slug(image)


def check_rootfs(path: Path) -> Path:
    """The resolved rootfs directory, or an error naming the fix (blocking: stats files)."""
    real = path.resolve()
    if not (real / COMPLETE_MARK).is_file():
        raise SandboxError(f"no kernel root filesystem at {path}: {EXPORT_HINT}")
    if not (real / "usr/bin/python3").exists():
        raise SandboxError(f"the root filesystem at {path} has no /usr/bin/python3")
    for needed in ("tmp", "proc", "dev", "home"):
        if not (real / needed).is_dir():
            raise SandboxError(f"the root filesystem at {path} lacks /{needed}")
    return real


def _no_devices(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's 'tar' filter (no paths outside, no setuid/setgid bits), minus device nodes
    and fifos: the sandbox gets its own minimal /dev."""
    if member.isdev():
        return None
    return tarfile.tar_filter(member, dest)


# Files that debootstrap and `docker export` fill from the building host (its resolver,
# its name): the sandbox gets neutral ones. It has no network, so no resolver at all.
NEUTRAL_ETC = {
    "etc/resolv.conf": "# sandbox-kernel: no network, so no resolver\n",
    "etc/hostname": "sandbox\n",
    "etc/hosts": "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
}


def write_neutral_etc(tree: Path) -> None:
    """Replace the host-derived files of NEUTRAL_ETC in a rootfs ``tree`` (no link followed)."""
    for rel, text in NEUTRAL_ETC.items():
        path = tree / rel
        if path.is_symlink() or path.exists():
            path.unlink()
        path.write_text(text)
        os.chmod(path, 0o644)


FIREJAIL_SUFFIX = ".firejail"


def firejail_tree(rootfs: Path) -> Path:
    """Where firejail's own copy of a (resolved) rootfs lives: see :func:`make_firejail_tree`."""
    return rootfs.with_name(rootfs.name + FIREJAIL_SUFFIX)


def make_firejail_tree(rootfs: Path) -> Path:
    """firejail's ``--chroot`` writes the host's /etc/resolv.conf into the chroot at every
    launch (through the file it finds there, even a link). So firejail gets a tree of its
    own: hard links to ``rootfs`` (no extra space) except that one file, a separate copy,
    so the tree the other backends use never names the host's resolver. Root, blocking."""
    rootfs = rootfs.resolve()
    dest = firejail_tree(rootfs)
    if (dest / COMPLETE_MARK).is_file():
        return dest
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        subprocess.run(["cp", "-al", str(rootfs), str(tmp)], check=True, capture_output=True)
        own = tmp / "etc/resolv.conf"
        own.unlink(missing_ok=True)  # the link, not the shared file
        own.write_text(NEUTRAL_ETC["etc/resolv.conf"])
        os.chmod(own, 0o644)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def install_tree(tree: Path, image: str, key: str, root: Path = ROOTFS_ROOT) -> Path:
    """Move a finished rootfs ``tree`` to ``root/key`` and point ``root/<slug>`` at it."""
    write_neutral_etc(tree)
    dest = root / key
    (tree / COMPLETE_MARK).write_text(f"{image}\n")
    os.chmod(tree, 0o755)
    if dest.exists():
        shutil.rmtree(tree)
    else:
        tree.rename(dest)
    install_tree_link(image, key, root)
    return dest


def export_rootfs(image: str, root: Path = ROOTFS_ROOT) -> tuple[Path, bool]:
    """Export ``image`` (from the local Docker daemon) into ``root``; blocking, root.

    Returns (directory, whether anything was exported). Idempotent per image id."""
    import docker

    if os.geteuid() != 0:
        raise SandboxError("exporting the root filesystem needs root (file ownership); use sudo")
    try:
        client = docker.from_env(timeout=300)
        img = client.images.get(image)
    except docker.errors.ImageNotFound:
        raise SandboxError(
            f"image {image!r} is not on this host: `sandbox-kernel image build`"
        ) from None
    except docker.errors.DockerException as exc:
        raise SandboxError(f"cannot reach the Docker daemon: {exc}") from None
    key = str(img.id).split(":")[-1][:16]
    dest = root / key
    if (dest / COMPLETE_MARK).is_file():
        install_tree_link(image, key, root)
        made = not (firejail_tree(dest) / COMPLETE_MARK).is_file()
        make_firejail_tree(dest)
        return dest, made
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    tree = Path(tempfile.mkdtemp(prefix=".export-", dir=root))
    container = client.containers.create(image, command=["true"], network_mode="none")
    try:
        proc = subprocess.Popen(["docker", "export", container.id], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            tar.extractall(tree, filter=_no_devices)
        if proc.wait() != 0:
            raise SandboxError(f"`docker export` of {image} failed")
        for needed in ("tmp", "proc", "dev", "home", "sys"):
            (tree / needed).mkdir(exist_ok=True)
        # The 'tar' filter cleared the sticky bit; every backend mounts a tmpfs over /tmp,
        # whose permissions firejail copies from here.
        os.chmod(tree / "tmp", 0o1777)
        dest = install_tree(tree, image, key, root)
        make_firejail_tree(dest)
        return dest, True
    except BaseException:
        shutil.rmtree(tree, ignore_errors=True)
        raise
    finally:
        container.remove(force=True)


def install_tree_link(image: str, key: str, root: Path = ROOTFS_ROOT) -> None:
    """Point ``root/<slug>`` at ``key``, atomically: a launch sees the old or the new tree."""
    link = root / image_slug(image)
    if link.is_symlink() and os.readlink(link) == key:
        return
    tmp_link = root / f".{image_slug(image)}.{os.getpid()}"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(key)
    tmp_link.replace(link)
