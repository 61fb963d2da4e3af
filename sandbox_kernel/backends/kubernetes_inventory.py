"""Kernel pods as ``gc`` sees them: whose they are, and which have lost their server.

A kernel pod carries its :class:`~.owner.Owner` as labels (:func:`pod_labels`), as a
Docker sandbox carries them; :func:`orphans` (pure) picks the pods whose Jupyter
process, on this host, is gone, and :func:`remove_orphan_pods` (blocking: the official
client's calls) deletes them. The ``kubernetes`` backend's ``remove_orphans`` will be
that; a pod whose server died usually ends by itself (its attach stream closes, so does
the agent's stdin), and this removes the rest: pods whose agent never ran, and the
finished pods a ``restartPolicy: Never`` pod leaves behind.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from typing import Any

from .owner import LABEL_BACKEND, LABEL_HOST, LABEL_MANAGED, Owner

BACKEND = "kubernetes"  # its LABEL_BACKEND value


def pod_labels(owner: Owner) -> dict[str, str]:
    """The labels of ``owner``'s kernel pod (``kubernetes_pod.kernel_pod`` checks them)."""
    return {**owner.labels(), LABEL_BACKEND: BACKEND}


def selector(host: str) -> str:
    """The label selector of this backend's pods of the Jupyter processes of ``host``."""
    return f"{LABEL_MANAGED}=1,{LABEL_BACKEND}={BACKEND},{LABEL_HOST}={host}"


def orphans(pods: Iterable[tuple[str, Mapping[str, str]]], host: str) -> list[str]:
    """The names, of ``(name, labels)`` pairs, of pods whose owner ran on ``host`` and is
    gone (another host's pods are never judged here)."""
    found = []
    for name, labels in pods:
        owner = Owner.from_labels(labels)
        if owner is not None and owner.server_gone(host):
            found.append(name)
    return found


def remove_orphan_pods(core: Any, namespace: str, host: str | None = None) -> list[str]:
    """Delete the kernel pods in ``namespace`` whose Jupyter process on this host died;
    their names. Blocking (``core``: the client's ``CoreV1Api``)."""
    from kubernetes.client import ApiException

    host = host or socket.gethostname()
    listed = core.list_namespaced_pod(namespace, label_selector=selector(host))
    pods = [(p.metadata.name, p.metadata.labels or {}) for p in listed.items]
    removed = []
    for name in orphans(pods, host):
        try:
            core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:  # 404: gone meanwhile
                raise
        removed.append(name)
    return removed
