"""The Docker backend's pure parts (backends/docker.py): which runtimes it accepts and how
it checks the daemon's registration of them, the policy in Docker's terms
(``container_spec``), and where the daemon is (``docker_endpoint``)."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox_kernel.backends.docker import DockerBackend, container_spec, docker_endpoint
from sandbox_kernel.errors import PolicyError, SandboxError
from sandbox_kernel.image.recipe import DEFAULT_IMAGE
from sandbox_kernel.policy import SANDBOX_HOME, SandboxPolicy
from tests.helpers import policy

MiB = 2**20
GiB = 2**30


# -- runtime -----------------------------------------------------------------------------


# The runtime is the Docker backend's setting (backends/docker.py), not the policy's.


def _docker(**settings: Any) -> Any:
    return DockerBackend(None, **settings)


@pytest.mark.parametrize("runtime", ["runc", "io.containerd.runc.v2", "kata", "crun"])
def test_non_gvisor_runtime_refused_without_opt_in(runtime: str) -> None:
    with pytest.raises(PolicyError, match="allow_weaker_runtime"):
        _docker(runtime=runtime)
    backend = _docker(runtime=runtime, allow_weaker_runtime=True)
    assert backend.runtime == runtime and backend.allow_weaker_runtime


class _FakeDaemon:
    """What DockerBackend._preflight asks of the Docker client: info() and images.get()."""

    def __init__(self, runtimes: dict[str, Any]) -> None:
        self.runtimes = runtimes
        self.images = self

    def info(self) -> dict[str, Any]:
        return {"Runtimes": self.runtimes}

    def get(self, image: str) -> object:
        return object()


def test_current_gvisor_runtime_is_gvisor() -> None:
    """runsc-current (setup-host's SANDBOX_KERNEL_RUNSC=current) is gVisor: accepted without
    the weaker-runtime opt-in, given exactly runsc's container, and held to runsc's flags."""
    backend = _docker(runtime="runsc-current")
    assert backend.runtime == "runsc-current" and not backend.allow_weaker_runtime
    assert spec(runtime="runsc-current") == {**spec(runtime="runsc"), "runtime": "runsc-current"}
    path = "/usr/local/lib/sandbox-kernel/runsc-v0/runsc"
    flags = ["--network=none", "--oci-seccomp"]
    backend._client = _FakeDaemon({"runsc-current": {"path": path, "runtimeArgs": flags}})
    found = backend._preflight(policy())
    assert found.runtime == "runsc-current" and found.warnings == ()
    assert found.foreign_kernel and found.kernel_user_apart
    for missing in flags:
        args = [a for a in flags if a != missing]
        backend._client = _FakeDaemon({"runsc-current": {"path": path, "runtimeArgs": args}})
        with pytest.raises(SandboxError, match=f"without {missing}"):
            backend._preflight(policy())


@pytest.mark.parametrize("runtime", ["", "run sc", "runsc;rm -rf /", "../runsc", "runsc\n"])
def test_malformed_runtime_refused_even_with_opt_in(runtime: str) -> None:
    with pytest.raises(PolicyError, match="runtime"):
        _docker(runtime=runtime, allow_weaker_runtime=True)


# -- container_spec ------------------------------------------------------------------------------


def spec(pol: SandboxPolicy | None = None, runtime: str = "runsc") -> dict[str, Any]:
    return container_spec(
        pol or policy(),
        runtime=runtime,
        command=["python3", "-I", "-S", "-c", "pass"],
        labels={"org.sandbox-kernel.managed": "1"},
        name="sandbox-kernel-test",
    )


def test_container_spec_isolation() -> None:
    pol = policy(
        memory_limit="1g", nproc_limit=300, pids_limit=2000, nofile_limit=1000, cpu_limit=0.5
    )
    s = spec(pol)
    assert s["network_mode"] == "none"
    assert s["dns"] == ["127.0.0.1"]  # not the host's resolver
    assert s["read_only"] is True
    assert s["privileged"] is False
    assert s["volumes"] == {} and s["mounts"] == [] and s["devices"] == []
    for key in ("binds", "volumes_from", "device_requests", "pid_mode", "ipc_mode"):
        assert key not in s
    assert s["cap_drop"] == ["ALL"]
    assert "no-new-privileges" in s["security_opt"]
    # gVisor: the agent is the sandbox's root with three capabilities; it runs the kernel
    # as the policy's user (agent/main.py), which the host checks at start.
    assert s["user"] == "0:0"
    assert sorted(s["cap_add"]) == ["KILL", "SETGID", "SETPCAP", "SETUID"]
    assert s["mem_limit"] == GiB and s["memswap_limit"] == s["mem_limit"]
    assert s["nano_cpus"] == 500_000_000
    assert s["pids_limit"] == 2000
    ulimits = {u["Name"]: (u["Soft"], u["Hard"]) for u in s["ulimits"]}
    assert ulimits["nproc"] == (300, 300)
    assert ulimits["nofile"] == (1000, 1000)
    assert ulimits["core"] == (0, 0)
    assert s["log_config"]["Type"] == "none"
    assert s["stdin_open"] is True and s["tty"] is False
    assert s["image"] == DEFAULT_IMAGE
    assert s["command"] == ["python3", "-I", "-S", "-c", "pass"]
    assert s["labels"] == {"org.sandbox-kernel.managed": "1"}
    assert s["name"] == "sandbox-kernel-test"


def test_container_spec_environment_carries_no_server_variables() -> None:
    s = spec(policy(env_allow=["TZ"], env={"A": "1"}))
    assert s["environment"] == {"HOME": SANDBOX_HOME, "LANG": "C.UTF-8"}


def test_container_spec_under_runc_keeps_the_policy_user_and_no_capabilities() -> None:
    s = spec(runtime="runc")
    assert s["user"] == "1000:1000" and "cap_add" not in s
    assert s["cap_drop"] == ["ALL"]


@pytest.mark.parametrize("runtime", ["runsc", "runc"])
def test_container_spec_passes_runtime_through(runtime: str) -> None:
    assert spec(runtime=runtime)["runtime"] == runtime


def test_container_spec_tmpfs_for_tmp_and_home_with_size_caps() -> None:
    pol = policy(tmp_size="64m", home_size="128m")
    tmpfs = spec(pol)["tmpfs"]
    assert set(tmpfs) == {"/tmp", SANDBOX_HOME, "/dev/net"}
    tmp_opts = tmpfs["/tmp"].split(",")
    home_opts = tmpfs[SANDBOX_HOME].split(",")
    assert f"size={64 * MiB}" in tmp_opts
    assert f"size={128 * MiB}" in home_opts
    for opts in (tmp_opts, home_opts):
        assert {"nosuid", "nodev", "noexec"} <= set(opts)
    assert {"uid=1000", "gid=1000", "mode=0700"} <= set(home_opts)


@pytest.mark.parametrize("runtime", ["runsc", "runc"])
def test_container_spec_hides_dev_net(runtime: str) -> None:
    """gVisor creates /dev/net/tun in every sandbox: an empty, read-only tmpfs covers it."""
    opts = spec(runtime=runtime)["tmpfs"]["/dev/net"].split(",")
    assert {"ro", "nosuid", "nodev", "noexec", "size=4k"} <= set(opts)


def test_container_spec_labels_are_copied() -> None:
    labels = {"k": "v"}
    s = container_spec(policy(), runtime="runsc", command=[], labels=labels, name="n")
    s["labels"]["k2"] = "v2"
    assert labels == {"k": "v"}


# -- docker_endpoint ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, expected",
    [
        (None, ("unix", "/var/run/docker.sock")),
        ("unix:///run/user/1000/docker.sock", ("unix", "/run/user/1000/docker.sock")),
        ("tcp://127.0.0.1:2376", ("tcp", ("127.0.0.1", 2376))),
        ("tcp://docker.local", ("tcp", ("docker.local", 2375))),
    ],
)
def test_docker_endpoint(
    monkeypatch: pytest.MonkeyPatch, host: str | None, expected: tuple[str, Any]
) -> None:
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    if host is None:
        monkeypatch.delenv("DOCKER_HOST", raising=False)
    else:
        monkeypatch.setenv("DOCKER_HOST", host)
    assert docker_endpoint() == expected


@pytest.mark.parametrize(
    "host", ["ssh://user@host", "npipe:////./pipe/docker_engine", "tcp://", "http://x"]
)
def test_docker_endpoint_unsupported(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    monkeypatch.setenv("DOCKER_HOST", host)
    with pytest.raises(SandboxError, match="not supported"):
        docker_endpoint()


def test_docker_endpoint_refuses_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2376")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    with pytest.raises(SandboxError, match="DOCKER_TLS_VERIFY"):
        docker_endpoint()


def test_process_limit_per_runtime() -> None:
    """gVisor: RLIMIT_NPROC per sandbox, pids cgroup as a looser backstop. runc: RLIMIT_NPROC
    would count every process of uid 1000 on the host, so the pids cgroup carries the limit."""
    pol = policy(nproc_limit=64, pids_limit=4096)
    gvisor = container_spec(pol, runtime="runsc", command=["x"], labels={}, name="n")
    runc = container_spec(pol, runtime="runc", command=["x"], labels={}, name="n")
    nproc = {u["Name"]: u for u in gvisor["ulimits"]}["nproc"]
    assert (nproc["Soft"], gvisor["pids_limit"]) == (64, 4096)
    assert runc["pids_limit"] == 64
    assert {u["Name"]: u for u in runc["ulimits"]}["nproc"]["Soft"] > 64
