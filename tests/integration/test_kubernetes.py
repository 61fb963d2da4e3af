"""Kernel pods on a real Kubernetes (issue 23): the cluster's part of the isolation.

Needs a cluster with a gVisor RuntimeClass and the kernel image on its node:
``scripts/dev-cluster.sh up`` makes one on this machine and prints the KUBECONFIG to
export. Without KUBECONFIG the module is skipped, saying so; with it, nothing here skips.
Each test creates its pods in a namespace of its own, deleted at the end (and asserted
gone), and tries from inside the pod what kernel code would try.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from sandbox_kernel.backends.kubernetes_attach import attach_pod
from sandbox_kernel.backends.kubernetes_inventory import pod_labels, remove_orphan_pods
from sandbox_kernel.backends.kubernetes_pod import CONTAINER, kernel_pod, server_role
from sandbox_kernel.backends.owner import Owner
from sandbox_kernel.bundle import agent_payload, bootstrap_command
from sandbox_kernel.inside import ops, protocol
from sandbox_kernel.policy import SANDBOX_USER, build_policy
from sandbox_kernel.relay.session import AgentSession
from tests.helpers import K8S_POD_TIMEOUT, K8S_RUNTIME_CLASS, NetnsHost, kube_namespace

if not os.environ.get("KUBECONFIG"):
    pytest.skip(
        "no Kubernetes cluster: KUBECONFIG is unset (scripts/dev-cluster.sh up starts one "
        "and prints the export)",
        allow_module_level=True,
    )

from kubernetes import client, config
from kubernetes.stream import stream


@pytest.fixture(scope="module")
def core() -> client.CoreV1Api:
    config.load_kube_config()
    api = client.CoreV1Api()
    node_api = client.NodeV1Api()
    try:
        node_api.read_runtime_class(K8S_RUNTIME_CLASS)
    except client.ApiException as exc:
        pytest.fail(f"the cluster has no RuntimeClass {K8S_RUNTIME_CLASS!r} ({exc.reason})")
    return api


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    with kube_namespace(core, "skt") as name:
        yield name


# the test pods' own policy: the defaults with a smaller memory cap (a loaded 2-core node)
POLICY = build_policy(memory_limit="512m", tmp_size="64m", home_size="64m")
LABELS = {"sandbox-kernel.test": "1"}


def pod(name: str, command: list[str], *, agent: bool) -> dict[str, Any]:
    """The backend's pod (``kubernetes_pod.kernel_pod``); the image the node has imported."""
    manifest = kernel_pod(
        name, POLICY, runtime_class=K8S_RUNTIME_CLASS, command=command, labels=LABELS, agent=agent
    )
    manifest["spec"]["containers"][0]["imagePullPolicy"] = "Never"
    return manifest


def create_pod(core: client.CoreV1Api, ns: str, manifest: dict[str, Any]) -> None:
    # the client takes a manifest as a dict as well as a V1Pod (its types say V1Pod only)
    core.create_namespaced_pod(ns, cast(client.V1Pod, manifest))


def wait_phase(core: client.CoreV1Api, ns: str, name: str, phases: set[str]) -> str:
    deadline = time.monotonic() + K8S_POD_TIMEOUT
    phase = "?"
    while time.monotonic() < deadline:
        status = core.read_namespaced_pod(name, ns).status
        phase = str(status.phase) if status else "?"
        if phase in phases:
            return phase
        if phase == "Failed":
            break
        time.sleep(0.5)
    log = core.read_namespaced_pod_log(name, ns) if phase in {"Failed", "Succeeded"} else ""
    events = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}")
    pytest.fail(
        f"pod {name} is {phase}, not {phases}; log: {log!r}; events: "
        f"{[e.message for e in events.items]}"
    )


def run_inside(core: client.CoreV1Api, ns: str, code: str) -> Any:
    """Run Python ``code`` in a fresh kernel pod as the policy's uid; its JSON output."""
    name = f"probe-{uuid.uuid4().hex[:6]}"
    create_pod(core, ns, pod(name, ["python3", "-c", code], agent=False))
    wait_phase(core, ns, name, {"Succeeded"})
    return json.loads(core.read_namespaced_pod_log(name, ns).strip().splitlines()[-1])


def test_pod_runs_in_gvisor_with_only_loopback(
    core: client.CoreV1Api, namespace: str, test_host: NetnsHost
) -> None:
    # a service in the pod's namespace, which service links would announce in its env
    core.create_namespaced_service(
        namespace,
        cast(
            client.V1Service, {"metadata": {"name": "neighbour"}, "spec": {"ports": [{"port": 80}]}}
        ),
    )
    found = run_inside(
        core,
        namespace,
        "import json, os, platform, socket\n"
        "out = {'release': platform.release(), 'ifaces': [n for _, n in socket.if_nameindex()],\n"
        "       'uid': os.getuid(),\n"
        "       'version': open('/proc/version').read(),\n"
        "       'token': os.path.exists('/var/run/secrets/kubernetes.io'),\n"
        "       'env': sorted(k for k in os.environ if k.endswith('_SERVICE_HOST'))}\n"
        "try:\n"
        f"    socket.create_connection(('{test_host.addr}', {test_host.port}), timeout=3)\n"
        "    out['lan'] = 'connected'\n"
        "except OSError as e:\n"
        "    out['lan'] = 'blocked: %s' % e\n"
        "try:\n"
        "    open('/escape', 'w')\n"
        "    out['rootfs'] = 'written'\n"
        "except OSError as e:\n"
        "    out['rootfs'] = 'blocked: %s' % e\n"
        "print(json.dumps(out))",
    )
    assert found["release"] != os.uname().release, "the pod sees the host's kernel: not gVisor"
    # gVisor's own kernel names itself (dmesg needs CAP_SYSLOG, which the probe lacks)
    assert "gvisor" in found["version"], found["version"]
    assert found["ifaces"] == ["lo"], found["ifaces"]  # runsc network=none, whatever the CNI
    assert found["lan"].startswith("blocked"), found["lan"]
    assert found["rootfs"].startswith("blocked"), found["rootfs"]
    assert found["uid"] == int(SANDBOX_USER.split(":")[0])
    # no service links (enableServiceLinks: false): not the namespace's services; only the
    # API server's KUBERNETES_SERVICE_HOST, which the kubelet sets in every pod whatever
    # the spec says (docs/kubernetes.md), an address the pod has no network to reach
    assert found["token"] is False and found["env"] == ["KUBERNETES_SERVICE_HOST"]


def test_agent_answers_over_the_attach_stream(core: client.CoreV1Api, namespace: str) -> None:
    """The relay's channel: the agent goes in over the pod's stdin through the official
    client's attach stream (no port-forward, no pod IP) and its frames come out on stdout."""
    name = "kernel-agent"
    create_pod(core, namespace, pod(name, bootstrap_command(), agent=True))
    wait_phase(core, namespace, name, {"Running"})
    # The official client's own WSClient (write_stdin, read_stdout), as a user of the
    # client would open it; the backend opens the raw websocket (open_attach) instead.
    ws = stream(
        core.connect_get_namespaced_pod_attach,
        name,
        namespace,
        container=CONTAINER,
        stdin=True,
        stdout=True,
        stderr=False,
        tty=False,
        binary=True,
        _preload_content=False,
    )
    try:
        ws.write_stdin(agent_payload(escaped_stdin=False, kernel_user=SANDBOX_USER))
        decoder = protocol.FrameDecoder()
        hello: dict[str, Any] | None = None
        deadline = time.monotonic() + K8S_POD_TIMEOUT
        while hello is None and ws.is_open() and time.monotonic() < deadline:
            ws.update(timeout=1)
            for frame in decoder.feed(ws.read_stdout(timeout=0) or b""):
                if frame.type == protocol.CONTROL:
                    message = protocol.decode_control(frame.payload)
                    if message.get("op") == ops.HELLO:
                        hello = message
        assert hello is not None, "no hello from the agent over the attach stream"
    finally:
        ws.close()
    assert hello["version"] == protocol.VERSION
    assert hello["release"] != os.uname().release  # gVisor's kernel, not the host's
    assert hello["uid"] == 0 and hello["kernel_uid"] == int(SANDBOX_USER.split(":")[0])
    assert hello["undumpable"] is True
    # stdinOnce: closing the attach stream closes the agent's stdin, and the agent ends
    # the pod, as a dead Jupyter server's sandbox ends on one host.
    assert wait_phase(core, namespace, name, {"Succeeded", "Failed"}) in {"Succeeded", "Failed"}


def test_relay_session_over_the_pod_stream(core: client.CoreV1Api, namespace: str) -> None:
    """The relay's own session (``AgentSession``) over ``kubernetes_attach.PodStream``: the
    agent's bundle in, its hello and a control round trip out, then the session's close
    ends the pod."""
    name = "kernel-session"
    create_pod(core, namespace, pod(name, bootstrap_command(), agent=True))
    wait_phase(core, namespace, name, {"Running"})
    console: list[bytes] = []

    async def run() -> tuple[dict[str, Any], bool]:
        session = AgentSession(name, console=console.append, log=logging.getLogger("test"))
        await attach_pod(session, core, namespace, name, CONTAINER)
        assert session.escape_stdin is False and session.hello is not None
        session.send_agent(agent_payload(escaped_stdin=False, kernel_user=SANDBOX_USER))
        hello = await asyncio.wait_for(session.hello, K8S_POD_TIMEOUT)
        session.close()
        await asyncio.wait_for(
            asyncio.to_thread(session.dead.wait, K8S_POD_TIMEOUT), K8S_POD_TIMEOUT
        )
        return hello, session.dead.is_set()

    hello, dead = asyncio.run(run())
    assert hello["release"] != os.uname().release  # gVisor's kernel, not the host's
    assert hello["uid"] == 0 and hello["kernel_uid"] == int(SANDBOX_USER.split(":")[0])
    assert dead, "the session did not see its stream end"
    # the stream's end closed the agent's stdin: the pod ends
    assert wait_phase(core, namespace, name, {"Succeeded", "Failed"}) in {"Succeeded", "Failed"}


def service_account_api(core: client.CoreV1Api, namespace: str) -> client.ApiClient:
    """A client that is a new service account of ``namespace`` bound to the backend's
    Role (``kubernetes_pod.server_role``), with a short-lived token: what a Jupyter
    server's pod holds."""
    rbac = client.RbacAuthorizationV1Api()
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="jupyter"))
    )
    rbac.create_namespaced_role(
        namespace, cast(client.V1Role, server_role("sandbox-kernel-server", namespace))
    )
    rbac.create_namespaced_role_binding(
        namespace,
        cast(
            client.V1RoleBinding,
            {
                "metadata": {"name": "jupyter"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "sandbox-kernel-server",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "jupyter", "namespace": namespace}],
            },
        ),
    )
    status = core.create_namespaced_service_account_token(
        "jupyter",
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
        ),
    ).status
    assert status is not None and status.token, "the API server gave no token"
    token = status.token
    conf = client.Configuration.get_default_copy()
    conf.cert_file = conf.key_file = None  # not the admin's certificate: the token only
    conf.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(conf)


def test_server_role_is_enough_for_the_relay_and_no_more(
    core: client.CoreV1Api, namespace: str
) -> None:
    """As a service account bound to the backend's Role: a kernel pod is created, attached
    (the agent's hello through the relay's session) and deleted; secrets, exec, another
    namespace and the node stay refused."""
    sa = client.CoreV1Api(service_account_api(core, namespace))
    name = "kernel-as-server"
    create_pod(sa, namespace, pod(name, bootstrap_command(), agent=True))
    wait_phase(sa, namespace, name, {"Running"})

    async def hello() -> dict[str, Any]:
        session = AgentSession(name, console=lambda _: None, log=logging.getLogger("test"))
        await attach_pod(session, sa, namespace, name, CONTAINER)
        session.send_agent(agent_payload(escaped_stdin=False, kernel_user=SANDBOX_USER))
        assert session.hello is not None
        found = await asyncio.wait_for(session.hello, K8S_POD_TIMEOUT)
        session.close()
        await asyncio.wait_for(
            asyncio.to_thread(session.dead.wait, K8S_POD_TIMEOUT), K8S_POD_TIMEOUT
        )
        return found

    assert asyncio.run(hello())["kernel_uid"] == int(SANDBOX_USER.split(":")[0])
    refused: dict[str, Callable[[], object]] = {
        "secrets": lambda: sa.list_namespaced_secret(namespace),
        "another namespace": lambda: sa.list_namespaced_pod("default"),
        "nodes": lambda: sa.list_node(),
        "pod logs": lambda: sa.read_namespaced_pod_log(name, namespace),
        "exec": lambda: stream(
            sa.connect_get_namespaced_pod_exec, name, namespace, command=["id"], stdout=True
        ),
    }
    allowed = []
    for what, call in refused.items():
        try:
            call()
            allowed.append(what)
        except client.ApiException as exc:
            # exec's refusal arrives as the websocket handshake's failure (status 0)
            assert exc.status == 403 or "403" in str(exc.reason), (what, exc.status, exc.reason)
    assert allowed == [], f"the server's Role allows {allowed}"
    sa.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def test_gc_removes_pods_whose_server_is_gone(core: client.CoreV1Api, namespace: str) -> None:
    """``kubernetes_inventory.remove_orphan_pods`` (the backend's gc): a pod whose
    Jupyter process on this host has died is deleted; a live server's pod and another
    host's stay."""
    child = subprocess.Popen(["true"])
    child.wait()  # its pid: a server that has died
    owners = {
        "gone": Owner(child.pid, "1", socket.gethostname(), "jo", "k-gone"),
        "alive": Owner.current(kernel_id="k-alive"),
        "elsewhere": Owner(child.pid, "1", "another-host", "jo", "k-elsewhere"),
    }
    for name, owner in owners.items():
        manifest = pod(name, ["sleep", "600"], agent=False)
        manifest["metadata"]["labels"] = pod_labels(owner)
        create_pod(core, namespace, manifest)
    assert remove_orphan_pods(core, namespace) == ["gone"]
    deadline = time.monotonic() + K8S_POD_TIMEOUT
    while True:
        left = {p.metadata.name for p in core.list_namespaced_pod(namespace).items if p.metadata}
        if left == {"alive", "elsewhere"} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert left == {"alive", "elsewhere"}
    assert remove_orphan_pods(core, namespace) == []  # nothing more to remove
