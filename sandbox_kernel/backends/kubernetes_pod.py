"""A kernel's pod: the policy in Kubernetes' terms (pure, like ``docker.container_spec``).

The ``kubernetes`` backend creates one pod per kernel from :func:`kernel_pod`, and
``tests/integration/test_kubernetes.py`` creates its pods from it too, so what the tests
prove of a pod (gVisor, only loopback, no token, read-only root) is what the backend
runs. No I/O here: the manifest is a plain dict the official client accepts.

What a pod spec cannot say, and the Docker backend does: per-container rlimits (nproc,
nofile), ``noexec`` on the memory volumes, and no logging of stdout (the relay's bytes
reach the node's pod log). docs/kubernetes.md lists these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import PolicyError
from ..policy import SandboxPolicy
from .gvisor import AGENT_CAPABILITIES

CONTAINER = "kernel"  # the pod's one container: the attach stream names it
# The pod's seccomp profile: the one the Docker backend enforces inside gVisor
# (seccomp.seccomp_profile), as a Localhost profile the node holds under this name in its
# kubelet's seccomp folder (<kubelet root>/seccomp/; dev-cluster.sh writes it). Not
# RuntimeDefault: containerd's default answers clone3 with errnoRet ENOSYS, which runsc
# ignores, so every clone3 fails EPERM and no thread can start in the pod (seen).
SECCOMP_PROFILE = "sandbox-kernel-gvisor.json"
# The scheduler's reservation of CPU per kernel; the limit is the policy's. Idle kernels
# use next to none, so a node is not full after a few of them.
CPU_REQUEST = "100m"
# RFC 1123 label: what a pod's name must be (the API refuses anything else).
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# RFC 1123 subdomain: what a RuntimeClass's name must be.
_DNS_SUBDOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
# A label value: at most 63 characters, alphanumeric at both ends.
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")


def check_name(name: str, what: str = "pod name") -> str:
    """``name`` if the API accepts it as a pod's (or a namespace's, a Role's) name, else a
    PolicyError saying so."""
    if not _DNS_LABEL.fullmatch(name):
        raise PolicyError(
            f"{name!r} is not a valid {what}: lower-case letters, digits and '-', "
            "at most 63 characters, starting and ending with a letter or digit"
        )
    return name


def check_subdomain(name: str, what: str) -> str:
    """``name`` if the API accepts it as the name of a cluster object such as a
    RuntimeClass (an RFC 1123 subdomain), else a PolicyError saying so."""
    if not _DNS_SUBDOMAIN.fullmatch(name):
        raise PolicyError(
            f"{what}: {name!r} is not a valid name: lower-case letters, digits, '-' and '.', "
            "at most 253 characters, each part starting and ending with a letter or digit"
        )
    return name


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """``labels`` as a dict if every value is a valid label value, else a PolicyError."""
    for key, value in labels.items():
        if not _LABEL_VALUE.fullmatch(value):
            raise PolicyError(
                f"label {key}={value!r} is not a valid Kubernetes label value (at most 63 "
                "letters, digits, '-', '_' or '.', alphanumeric at both ends)"
            )
    return dict(labels)


def kernel_pod(
    name: str,
    policy: SandboxPolicy,
    *,
    runtime_class: str,
    command: Sequence[str],
    labels: Mapping[str, str],
    agent: bool = True,
    image_pull_policy: str = "IfNotPresent",
) -> dict[str, Any]:
    """The pod manifest of one kernel (``agent``) or of a probe.

    Issue 23's settings: the gVisor RuntimeClass, no volumes but size-capped memory
    emptyDirs for ``/tmp`` and the home, no service account token, no service links, no
    DNS but the pod's own loopback (``dnsPolicy: None`` needs a nameserver), read-only
    root, the Docker backend's seccomp profile (:data:`SECCOMP_PROFILE`; enforced inside
    gVisor: the handler's ``oci-seccomp``), every capability dropped, no privilege
    escalation, the policy's memory as request and limit, its CPUs as limit.

    ``agent``: the container runs the agent as it runs under Docker with gVisor, as root
    of gVisor's kernel with only :data:`AGENT_CAPABILITIES` (to start the kernel as the
    policy's uid with none; so not ``runAsNonRoot``), its stdin open once (closing the
    attach stream ends the pod, as a dead server's sandbox ends on one host). Otherwise
    the container runs ``command`` as the policy's uid with no capability at all (the
    tests' probes of what kernel code sees).
    """
    uid, gid = (int(x) for x in policy.user.split(":"))
    security: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"], "add": list(AGENT_CAPABILITIES) if agent else []},
        "runAsUser": 0 if agent else uid,
        "runAsGroup": 0 if agent else gid,
        "runAsNonRoot": not agent,
        "seccompProfile": {"type": "Localhost", "localhostProfile": SECCOMP_PROFILE},
    }
    memory, tmp, home = (str(b) for b in (policy.memory_bytes, policy.tmp_bytes, policy.home_bytes))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": check_name(name), "labels": check_labels(labels)},
        "spec": {
            "runtimeClassName": runtime_class,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["127.0.0.1"]},  # the pod's own loopback
            "hostname": "sandbox",
            "terminationGracePeriodSeconds": 0,
            "volumes": [
                {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": tmp}},
                {"name": "home", "emptyDir": {"medium": "Memory", "sizeLimit": home}},
            ],
            "containers": [
                {
                    "name": CONTAINER,
                    "image": policy.image,
                    "imagePullPolicy": image_pull_policy,
                    "command": list(command),
                    "stdin": agent,
                    "stdinOnce": agent,
                    "tty": False,
                    "workingDir": "/" if agent else policy.home,
                    "env": [
                        {"name": "HOME", "value": policy.home},
                        {"name": "LANG", "value": "C.UTF-8"},
                    ],
                    "securityContext": security,
                    "resources": {
                        "limits": {"memory": memory, "cpu": f"{round(policy.cpus * 1000)}m"},
                        "requests": {"memory": memory, "cpu": CPU_REQUEST},
                    },
                    "volumeMounts": [
                        {"name": "tmp", "mountPath": "/tmp"},
                        {"name": "home", "mountPath": policy.home},
                    ],
                }
            ],
        },
    }


# What the Jupyter server's service account may do in the kernels' namespace: make, watch
# and remove kernel pods and attach to them (the relay). Nothing else: no secrets, no
# exec, no logs, no other namespace.
SERVER_RULES: tuple[dict[str, Any], ...] = (
    {
        "apiGroups": [""],
        "resources": ["pods"],
        "verbs": ["create", "get", "list", "watch", "delete"],
    },
    # the attach websocket is a GET upgrade: authorized as get and as create (1.34)
    {"apiGroups": [""], "resources": ["pods/attach"], "verbs": ["get", "create"]},
)


def server_role(name: str, namespace: str) -> dict[str, Any]:
    """The Role a Jupyter server's service account is bound to in the kernels' namespace
    (docs/kubernetes.md shows it; the tests bind a service account to it and run the
    relay as that account)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {
            "name": check_name(name, "Role name"),
            "namespace": check_name(namespace, "namespace"),
        },
        "rules": [dict(rule) for rule in SERVER_RULES],
    }
