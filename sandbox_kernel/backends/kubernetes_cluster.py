"""How a Jupyter server reaches its cluster, and what it may do there (blocking).

:func:`connect` loads the cluster's configuration as ``kubectl`` does (``KUBECONFIG`` or
``~/.kube/config``; in a pod, its service account) into a client configuration of its
own (the official client's global default is left alone); :func:`access_problems` asks
the API server (``SelfSubjectAccessReview``, which every authenticated account may)
whether this account may do what the backend needs, the verbs of
``kubernetes_pod.SERVER_RULES``; :func:`api_error` turns the client's exceptions into a
SandboxError naming the fix. Called by the ``kubernetes`` backend in worker threads,
and by its ``ps``/``gc`` directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import SandboxError
from .kubernetes_pod import SERVER_RULES

IN_CLUSTER_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
ROLE_HINT = (
    "bind the server's account to the Role kubernetes_pod.server_role in that namespace "
    "(docs/kubernetes.md shows it)"
)
NO_CLUSTER = (
    "no Kubernetes cluster is configured: set KUBECONFIG (or write ~/.kube/config), or run "
    "the Jupyter server in a pod with a service account (docs/kubernetes.md); "
    "scripts/dev-cluster.sh up makes one on this machine and prints the KUBECONFIG"
)
REQUEST_TIMEOUT = 30  # seconds per API call: a stuck API server must not hang a launch

T = TypeVar("T")


class ApiError(SandboxError):
    """An API call failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class NoCluster(SandboxError):
    """No cluster configuration here at all: this host has no kernel pods to look at
    (``ps`` and ``gc`` say nothing of them; a launch is refused)."""


@dataclass(frozen=True)
class Cluster:
    """A client configuration (``kubernetes.client.Configuration``), the namespace of
    the configuration's context (in a pod: its own), and where the API server is."""

    configuration: Any
    namespace: str
    host: str

    def api(self) -> Any:
        """A new ``ApiClient``: one per user of the stream API, whose ``stream()`` swaps
        the client's request method while it connects (not thread-safe on a shared one)."""
        from kubernetes import client

        return client.ApiClient(self.configuration)


def kubeconfig_path() -> str | None:
    """The kubeconfig ``kubectl`` would read here (``KUBECONFIG``, a ':'-list, or
    ``~/.kube/config``), if there is one."""
    given = os.environ.get("KUBECONFIG")
    if given:
        return given
    default = os.path.expanduser("~/.kube/config")
    return default if os.path.isfile(default) else None


def in_cluster() -> bool:
    """This process runs in a pod with a service account token."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.isfile(
        os.path.join(IN_CLUSTER_ACCOUNT, "token")
    )


def connect() -> Cluster:
    """The cluster's configuration; NoCluster when there is none, SandboxError when it
    cannot be read. Nothing is sent to the API server yet."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise NoCluster(
            "the kubernetes backend needs the official client: pip install 'kubernetes>=29' "
            "(in the Jupyter server's environment)"
        ) from None
    path = kubeconfig_path()
    conf = client.Configuration()
    if path:
        try:
            config.load_kube_config(config_file=path, client_configuration=conf)
            _, active = config.list_kube_config_contexts(config_file=path)
        except (config.ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
            raise SandboxError(
                f"cannot use the kubeconfig {path!r} ({exc}): fix it, or point KUBECONFIG "
                "at a valid one"
            ) from None
        namespace = str(((active or {}).get("context") or {}).get("namespace") or "default")
    elif in_cluster():
        try:
            config.load_incluster_config(client_configuration=conf)
            with open(os.path.join(IN_CLUSTER_ACCOUNT, "namespace")) as f:
                namespace = f.read().strip() or "default"
        except (config.ConfigException, OSError) as exc:
            raise SandboxError(f"cannot use this pod's service account ({exc})") from None
    else:
        raise NoCluster(NO_CLUSTER)
    return Cluster(conf, namespace, str(conf.host))


def api_error(exc: BaseException, what: str, namespace: str, host: str) -> ApiError:
    """The client's exception from ``what`` (e.g. "create pods") as an error naming the fix
    (pure)."""
    status = int(getattr(exc, "status", None) or 0)
    reason = getattr(exc, "reason", None) or exc.__class__.__name__
    if status == 403:
        return ApiError(
            f"the Kubernetes API server refused to {what} in namespace {namespace!r} "
            f"(403 Forbidden): {ROLE_HINT}",
            status,
        )
    if status == 401:
        return ApiError(
            f"the Kubernetes API server at {host} did not accept this server's credentials "
            "(401): renew them (KUBECONFIG's user, or the pod's service account token)",
            status,
        )
    if status == 0:
        return ApiError(
            f"cannot reach the Kubernetes API server at {host} to {what} ({reason}): check "
            "that the cluster is up and KUBECONFIG names it",
            status,
        )
    body = str(getattr(exc, "body", "") or "")[:300]
    return ApiError(
        f"the Kubernetes API server could not {what} in namespace {namespace!r}: "
        f"{status} {reason} {body}".rstrip(),
        status,
    )


def call(
    cluster: Cluster, namespace: str, what: str, fn: Callable[..., T], *a: Any, **kw: Any
) -> T:
    """``fn(*a, **kw)`` (a client call), its failure as :func:`api_error` (blocking)."""
    from kubernetes.client import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn(*a, _request_timeout=REQUEST_TIMEOUT, **kw)
    except (ApiException, HTTPError, OSError) as exc:
        raise api_error(exc, what, namespace, cluster.host) from None


def needed_access() -> list[tuple[str, str, str]]:
    """(resource, subresource, verb) of every permission in ``SERVER_RULES``."""
    found = []
    for rule in SERVER_RULES:
        for resource in rule["resources"]:
            base, _, sub = resource.partition("/")
            found += [(base, sub, verb) for verb in rule["verbs"]]
    return found


def access_problems(cluster: Cluster, api: Any, namespace: str) -> list[str]:
    """What of :func:`needed_access` this account may not do in ``namespace``, as
    "verb resource[/sub]" (the API server's own answer; blocking)."""
    from kubernetes import client

    authz = client.AuthorizationV1Api(api)
    denied = []
    for resource, sub, verb in needed_access():
        review = client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(
                    namespace=namespace, verb=verb, resource=resource, subresource=sub or None
                )
            )
        )
        answer = call(
            cluster,
            namespace,
            "review its own access",
            authz.create_self_subject_access_review,
            review,
        )
        if not (answer.status and answer.status.allowed):
            denied.append(f"{verb} {resource}" + (f"/{sub}" if sub else ""))
    return denied
