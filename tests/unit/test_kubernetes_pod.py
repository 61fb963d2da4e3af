"""A kernel's pod (backends/kubernetes_pod.py): issue 23's pod settings from the policy,
and the names and labels the API would refuse, refused here first with the fix; the
attach stream's message framing (backends/kubernetes_attach.py); the owner's labels and
the orphans gc removes (backends/kubernetes_inventory.py)."""

from __future__ import annotations

import socket
import subprocess
from typing import Any

import pytest

from sandbox_kernel.backends.gvisor import AGENT_CAPABILITIES
from sandbox_kernel.backends.kubernetes_attach import (
    STDIN,
    STDOUT,
    PodStreamError,
    split_message,
    stdin_message,
)
from sandbox_kernel.backends.kubernetes_inventory import orphans, pod_labels
from sandbox_kernel.backends.kubernetes_pod import (
    CONTAINER,
    check_name,
    kernel_pod,
    server_role,
)
from sandbox_kernel.backends.owner import Owner
from sandbox_kernel.errors import PolicyError
from sandbox_kernel.policy import SANDBOX_HOME, build_policy

MiB = 2**20
POLICY = build_policy(memory_limit="1g", cpu_limit=0.5, tmp_size="64m", home_size="32m")


def manifest(agent: bool = True, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"runtime_class": "gvisor", "command": ["python3"], "labels": {}}
    return kernel_pod("kernel-1", POLICY, **{**args, **kw}, agent=agent)


def container(m: dict[str, Any]) -> dict[str, Any]:
    (only,) = m["spec"]["containers"]
    assert only["name"] == CONTAINER
    return dict(only)


def test_pod_has_no_way_out_but_stdio() -> None:
    """No token, no service links, no DNS but loopback, no volume but the two memory ones,
    no host namespace: nothing that reaches the cluster or the node."""
    spec = manifest()["spec"]
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["dnsPolicy"] == "None" and spec["dnsConfig"] == {"nameservers": ["127.0.0.1"]}
    assert spec["restartPolicy"] == "Never"
    assert [v["emptyDir"] for v in spec["volumes"]] == [
        {"medium": "Memory", "sizeLimit": str(64 * MiB)},
        {"medium": "Memory", "sizeLimit": str(32 * MiB)},
    ]
    assert not {"hostNetwork", "hostPID", "hostIPC", "nodeName"} & set(spec)
    c = container(manifest())
    assert [(m["name"], m["mountPath"]) for m in c["volumeMounts"]] == [
        ("tmp", "/tmp"),
        ("home", SANDBOX_HOME),
    ]
    assert [e["name"] for e in c["env"]] == ["HOME", "LANG"]


def test_agent_container_is_gvisor_root_with_only_its_capabilities() -> None:
    c = container(manifest(agent=True))
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": list(AGENT_CAPABILITIES)}
    assert (sc["runAsUser"], sc["runAsNonRoot"]) == (0, False)
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False and sc["seccompProfile"] == {
        "type": "Localhost",
        "localhostProfile": "sandbox-kernel-gvisor.json",
    }
    # stdin once: the attach stream's end is the pod's end
    assert (c["stdin"], c["stdinOnce"], c["tty"]) == (True, True, False)


def test_probe_container_is_the_kernel_uid_with_nothing() -> None:
    sc = container(manifest(agent=False))["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": []}
    assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"]) == (1000, 1000, True)
    assert container(manifest(agent=False))["stdin"] is False


def test_policy_limits_are_requests_and_limits() -> None:
    resources = container(manifest())["resources"]
    assert resources["limits"] == {"memory": str(2**30), "cpu": "500m"}
    # memory is held, so reserved whole; CPU is reserved only a little (idle kernels)
    assert resources["requests"]["memory"] == str(2**30)


@pytest.mark.parametrize("name", ["", "Kernel", "k_1", "-k", "k-", "k" * 64, "k.1"])
def test_invalid_pod_name_refused(name: str) -> None:
    with pytest.raises(PolicyError, match="not a valid pod name"):
        check_name(name)
    with pytest.raises(PolicyError, match="not a valid pod name"):
        kernel_pod(name, POLICY, runtime_class="gvisor", command=[], labels={})


def test_valid_pod_name_kept() -> None:
    assert check_name("sk-" + "0" * 60) == "sk-" + "0" * 60


@pytest.mark.parametrize("value", ["a b", "x" * 64, "-a", "a/b"])
def test_invalid_label_value_refused(value: str) -> None:
    with pytest.raises(PolicyError, match="not a valid Kubernetes label value"):
        manifest(labels={"org.sandbox-kernel.owner": value})


def test_labels_kept() -> None:
    labels = {"org.sandbox-kernel.managed": "1", "org.sandbox-kernel.host": "", "k": "a.b_c-1"}
    assert manifest(labels=labels)["metadata"]["labels"] == labels


# -- the attach stream's messages (backends/kubernetes_attach.py) -------------------------


def test_stream_message_is_channel_then_payload() -> None:
    assert split_message(b"\x01frame") == (STDOUT, b"frame")
    assert split_message(b"\x03") == (3, b"")
    assert stdin_message(b"\x00\x10data") == b"\x00\x00\x10data"  # stdin: channel 0, raw
    assert split_message(stdin_message(b"x")) == (STDIN, b"x")


def test_empty_stream_message_refused() -> None:
    with pytest.raises(PodStreamError, match="no channel byte"):
        split_message(b"")


def test_server_role_is_pods_and_attach_in_one_namespace() -> None:
    role = server_role("sandbox-kernel-server", "kernels")
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "kernels"
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert {r for r, _ in granted} == {"pods", "pods/attach"}
    assert ("pods/attach", "get") in granted and ("pods/attach", "create") in granted
    assert not {v for _, v in granted} & {"*", "update", "patch", "escalate", "bind"}
    with pytest.raises(PolicyError, match="not a valid namespace"):
        server_role("r", "Kernels")


# -- whose pods, and which are orphans (backends/kubernetes_inventory.py) -----------------


def dead_pid() -> int:
    """A pid that just ended (not reused within a test)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_pod_labels_are_the_owner_and_valid() -> None:
    owner = Owner.current(kernel_id="0f0e3c2a-1b2c-4d5e-8f90-123456789abc")
    labels = pod_labels(owner)
    assert Owner.from_labels(labels) == owner
    assert manifest(labels=labels)["metadata"]["labels"] == labels  # the API takes them


def test_orphans_are_this_hosts_pods_whose_server_is_gone() -> None:
    host = socket.gethostname()
    gone = Owner(dead_pid(), "1", host, "jo", "k-gone")
    alive = Owner.current(kernel_id="k-alive")
    elsewhere = Owner(dead_pid(), "1", "another-host", "jo", "k-elsewhere")
    pods = [
        ("gone", pod_labels(gone)),
        ("alive", pod_labels(alive)),
        ("elsewhere", pod_labels(elsewhere)),
        ("not-ours", {"app": "x"}),
    ]
    assert orphans(pods, host) == ["gone"]
