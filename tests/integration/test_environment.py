"""Secrets and Jupyter/Docker plumbing never reach a sandbox, whoever lists them.

A variable named like a secret (token, secret, password, credentials, API key) or one of
Jupyter's, JupyterHub's or Docker's (``JPY_*``, ``JUPYTERHUB_*``, ``DOCKER_*``) is refused
from each of the three ways into a kernel's environment: ``env_allow`` (with the variable
set in the server's environment), the kernelspec's ``env`` and the provisioner's ``env``.
The launch fails with an error naming the variable and where it was listed, and nothing
is left behind. Should a launch not be refused (a weaker filter), the test reads the
environment from inside the sandbox (the kernel's and every process's) and reports what
reached it. A control proves that listed, harmless names do get in, so the readout inside
is not vacuous.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from sandbox_kernel.errors import PolicyError
from sandbox_kernel.image.recipe import DEFAULT_IMAGE
from sandbox_kernel.kernelspec import build_kernelspec
from sandbox_kernel.security.expectations import expected_blocked
from tests.helpers import DEFAULT_RUNTIME, Kernel, gvisor_release, listening_ports, our_containers

NEVER = [
    "GITHUB_TOKEN",
    "api_token",
    "AWS_SECRET_ACCESS_KEY",
    "DB_PASSWORD",
    "MY_PASSWD",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "OPENAI_API_KEY",
    "JPY_SESSION_NAME",
    "JPY_API_TOKEN",
    "JUPYTERHUB_USER",
    "JUPYTERHUB_API_TOKEN",
    "DOCKER_CONFIG",
    "DOCKER_AUTH_CONFIG",
]
SOURCES = ["env_allow", "kernelspec env", "env"]

# Everything a sandbox's processes hold in their environment, as the host will read it.
_READ_ENV = """\
import json, os
seen = {"os.environ": dict(os.environ)}
for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
    try:
        raw = open("/proc/%s/environ" % pid, "rb").read()
    except OSError:
        continue
    seen["/proc/%s/environ" % pid] = dict(e.decode(errors="replace").partition("=")[::2] for e in raw.split(b"\\0") if e)
print(json.dumps(seen))
"""


def _kernelspec(tmp_path: Path, config: dict[str, Any], env: dict[str, str]) -> KernelSpecManager:
    """A kernelspec with ``config`` as the provisioner's (not validated when written: the
    launch must refuse it) and ``env`` as the kernelspec's own environment."""
    spec = build_kernelspec({"image": DEFAULT_IMAGE})
    spec["metadata"]["kernel_provisioner"]["config"] = {"image": DEFAULT_IMAGE, **config}
    spec["env"] = env
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(tmp_path)])


def _environment_inside(km: KernelManager) -> dict[str, dict[str, str]]:
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        seen: dict[str, dict[str, str]] = Kernel(km, kc).value(_READ_ENV)
        return seen
    finally:
        kc.stop_channels()


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", NEVER)
def test_forbidden_variable_is_refused(
    name: str,
    source: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    docker_client: docker.DockerClient,
) -> None:
    value = f"sk-planted-{uuid.uuid4().hex}"
    config: dict[str, Any] = {"pool_size": 0}
    spec_env: dict[str, str] = {}
    if source == "env_allow":
        monkeypatch.setenv(name, value)
        config["env_allow"] = ["TZ", name]
    elif source == "env":
        config["env"] = {name: value}
    else:
        spec_env[name] = value
    ksm = _kernelspec(tmp_path, config, spec_env)
    before_ports = set(listening_ports(own_only=True))
    before = {c.id for c in our_containers(docker_client)}
    km = KernelManager(kernel_name="k", kernel_spec_manager=ksm)
    try:
        km.start_kernel()
    except PolicyError as err:
        msg = str(err)
        assert repr(name) in msg and msg.startswith(f"{source}:"), msg
        assert not km.has_kernel
        assert {c.id for c in our_containers(docker_client)} == before, "a container was left"
        new_ports = set(listening_ports(own_only=True)) - before_ports
        assert not new_ports, f"ports left listening: {new_ports}"
        return
    try:
        seen = _environment_inside(km)
    finally:
        km.shutdown_kernel(now=True)
    leaked = sorted(where for where, env in seen.items() if name in env or value in env.values())
    pytest.fail(
        f"{name} listed in {source} was not refused: a kernel started, and "
        + (f"the variable reached the sandbox ({', '.join(leaked)})" if leaked else
           "the variable was not seen inside (but the launch must fail, naming it)")
    )  # fmt: skip


def test_listed_harmless_variables_do_get_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_client: docker.DockerClient
) -> None:
    """Control: the same three ways do carry a harmless name into the sandbox, so the
    readout above would see a secret that got through."""
    values = {n: f"sk-value-{uuid.uuid4().hex}" for n in ("SK_ALLOWED", "SK_POLICY", "SK_SPEC")}
    monkeypatch.setenv("SK_ALLOWED", values["SK_ALLOWED"])
    monkeypatch.setenv("SK_NOT_LISTED", "sk-not-listed")
    config = {
        "pool_size": 0,
        "env_allow": ["SK_ALLOWED"],
        "env": {"SK_POLICY": values["SK_POLICY"]},
    }
    ksm = _kernelspec(tmp_path, config, {"SK_SPEC": values["SK_SPEC"]})
    km = KernelManager(kernel_name="k", kernel_spec_manager=ksm)
    km.start_kernel()
    try:
        seen = _environment_inside(km)
    finally:
        km.shutdown_kernel(now=True)
    env = seen["os.environ"]
    assert {n: env.get(n) for n in values} == values, env
    assert "SK_NOT_LISTED" not in env
    # os.environ and the kernel's own /proc/<pid>/environ; the agent's too on a gVisor
    # release with the info-agent-proc gap (it holds no secret either way: the readout of
    # the test above would see one that got through wherever the kernel can read it).
    release = gvisor_release("docker", DEFAULT_RUNTIME)  # the spec names no runtime
    agent_readable = not expected_blocked("docker", "info-agent-proc", release)
    assert len(seen) >= (3 if agent_readable else 2), f"the readout saw: {list(seen)}"


PIP_CELLS = [
    "%pip install tqdm",
    "!pip install tqdm",
    "!pip3 install tqdm",
    "import subprocess, sys\n"
    "r = subprocess.run([sys.executable, '-m', 'pip', 'install', 'tqdm'], capture_output=True, text=True)\n"
    "print(r.stderr)\n"
    "assert r.returncode == 0, 'pip failed'",
]


@pytest.mark.parametrize("cell", PIP_CELLS)
def test_pip_says_there_is_no_network_and_fails(shared_kernel: Kernel, cell: str) -> None:
    """A student's `%pip install` used to print "No module named pip", "you may need to
    restart the kernel" and end as a successful cell: an autograder saw nothing wrong.
    Every way to call pip explains that the sandbox has no network and who adds
    packages; the cell fails (``!pip`` is a shell escape, whose status IPython does not
    turn into an error: there, the explanation is what the student reads)."""
    from sandbox_kernel.image.recipe import NO_PIP_MESSAGE

    content, text = shared_kernel.run(cell, timeout=120)
    assert NO_PIP_MESSAGE in text.replace("\n", ""), text
    assert "restart the kernel" not in text, text  # IPython's own %pip did not run
    if not cell.startswith("!"):
        assert content["status"] == "error", (content, text)


def test_the_home_starts_from_the_image_skeleton(shared_kernel: Kernel) -> None:
    """The image's /etc/skel reaches the kernel's fresh home: matplotlib's pre-built font
    cache and IPython's startup files (the agent's check of the home used to fail under
    gVisor, so nothing was copied)."""
    found = shared_kernel.value(
        "import os, json\n"
        "home = os.path.expanduser('~')\n"
        "print(json.dumps([os.path.isdir(os.path.join(home, '.cache', 'matplotlib')),\n"
        "  os.listdir(os.path.join(home, '.ipython', 'profile_default', 'startup'))]))"
    )
    assert found == [True, ["00-sandbox-kernel-no-pip.py"]], found
