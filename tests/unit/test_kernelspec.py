"""Kernelspec install where it takes effect: a spec Jupyter would never find (shadowed by
one of the same name earlier in its search path) is refused before anything is written;
limits larger than the host are named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_kernel.errors import SandboxError
from sandbox_kernel.kernelspec import (
    DEFAULT_PROVISIONER_ENV,
    DEFAULT_PTH,
    LOCAL_PROVISIONER,
    PROVISIONER_NAME,
    beyond_host,
    build_kernelspec,
    effective_kernelspecs,
    host_kernelspec,
    host_spec_argv,
    install_kernelspec,
    install_sandbox_default,
    shadowed_by,
)

# What ipykernel's wheel writes to share/jupyter/kernels/python3/kernel.json (7.4.0),
# over ours whenever pip upgrades or reinstalls ipykernel in the environment.
IPYKERNEL_WHEEL_SPEC: dict[str, object] = {
    "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "Python 3 (ipykernel)",
    "language": "python",
    "metadata": {"debugger": True, "supported_encryption": ["curve"]},
    "kernel_protocol_version": "5.5",
}


def make_spec(folder: Path, name: str, spec: dict[str, object] | None = None) -> Path:
    (folder / name).mkdir(parents=True)
    (folder / name / "kernel.json").write_text(json.dumps(spec or {"argv": ["python3"]}))
    return folder / name


def test_shadowed_by_follows_the_search_order(tmp_path: Path) -> None:
    first, second = tmp_path / "venv", tmp_path / "user"
    earlier = make_spec(first, "Sandbox-Python")  # names compare lower-cased
    dirs = [str(first), str(second)]
    assert shadowed_by("sandbox-python", str(second / "sandbox-python"), dirs) == str(earlier)
    assert shadowed_by("sandbox-python", str(first / "sandbox-python"), dirs) is None
    assert shadowed_by("other", str(second / "other"), dirs) is None
    # A folder Jupyter does not search here (another environment's --prefix) is not judged.
    assert shadowed_by("sandbox-python", str(tmp_path / "elsewhere" / "x"), dirs) is None


@pytest.fixture
def search_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """JUPYTER_PATH (searched first) and the user's data dir (``--user``), both private."""
    first, user = tmp_path / "path", tmp_path / "user-data"
    monkeypatch.setenv("JUPYTER_PATH", str(first))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(user))
    return first / "kernels", user / "kernels"


def test_user_install_behind_a_same_named_spec_is_refused(
    search_path: tuple[Path, Path],
) -> None:
    """The issue's case: `install --user --memory 1g` behind the venv's sandbox-python
    printed "installed" and the kernel ran with no limit of the user's."""
    earlier_dir, user_dir = search_path
    earlier = make_spec(earlier_dir, "sandbox-python")
    spec = build_kernelspec({"memory_limit": "1g"})
    with pytest.raises(SandboxError) as refused:
        install_kernelspec(spec, "sandbox-python", user=True)
    message = str(refused.value)
    assert str(earlier) in message and str(user_dir / "sandbox-python") in message
    assert "never apply" in message and "--sys-prefix" in message
    assert not (user_dir / "sandbox-python").exists()  # nothing written
    # Under another name nothing shadows it: installed, and Jupyter finds it there.
    path, changed = install_kernelspec(spec, "sandbox-python-1g", user=True)
    assert changed and path == str(user_dir / "sandbox-python-1g")
    assert effective_kernelspecs(["sandbox-python-1g"])["sandbox-python-1g"][0] == path


def test_effective_kernelspecs_tells_sandboxed_from_host(
    search_path: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    earlier_dir, _ = search_path
    make_spec(earlier_dir, "python3", IPYKERNEL_WHEEL_SPEC)
    make_spec(earlier_dir, "sandbox-python", build_kernelspec({"memory_limit": "1g"}))
    make_spec(earlier_dir, "host", host_kernelspec("Python 3 (HOST)", ["python3"]))
    names = ["python3", "sandbox-python", "host", "absent"]
    monkeypatch.delenv(DEFAULT_PROVISIONER_ENV, raising=False)  # jupyter_client's default
    found = effective_kernelspecs(names)
    assert found["python3"] == (str(earlier_dir / "python3"), None)
    assert found["sandbox-python"] == (str(earlier_dir / "sandbox-python"), {"memory_limit": "1g"})
    assert found["host"] == (str(earlier_dir / "host"), None)
    assert found["absent"] == ("", None)
    # Where the sandbox is the default, a spec naming no provisioner gets the defaults;
    # one naming the local provisioner stays on the host.
    monkeypatch.setenv(DEFAULT_PROVISIONER_ENV, PROVISIONER_NAME)
    found = effective_kernelspecs(names)
    assert found["python3"] == (str(earlier_dir / "python3"), {})
    assert found["host"] == (str(earlier_dir / "host"), None)


def test_a_host_spec_runs_the_images_python_or_is_refused() -> None:
    """A spec written for the host (ipykernel's wheel: ``python``; ``ipykernel install``:
    the host interpreter's path) runs with the image's python3; another kernel is refused
    with the way to keep it on the host."""
    wheel = IPYKERNEL_WHEEL_SPEC["argv"]
    assert isinstance(wheel, list)
    assert host_spec_argv(wheel, "python3") == ["python3", *wheel[1:]]
    venv = ["/srv/venv/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert host_spec_argv(venv, "py") == ["python3", *venv[1:]]
    with pytest.raises(SandboxError) as refused:
        host_spec_argv(["R", "--slave", "-e", "IRkernel::main()"], "ir")
    message = str(refused.value)
    assert "'ir'" in message and "'R'" in message and LOCAL_PROVISIONER in message


def test_the_sandbox_default_survives_a_rewritten_python3(tmp_path: Path) -> None:
    """The ``.pth`` file makes every Python of the environment start with the sandbox as
    jupyter_client's default provisioner, unless the variable is set (the opt-out);
    written once, atomically, readable by all."""
    path, changed = install_sandbox_default(str(tmp_path))
    assert changed and Path(path).name == DEFAULT_PTH and Path(path).stat().st_mode & 0o777 == 0o644
    assert install_sandbox_default(str(tmp_path)) == (path, False)
    probe = (
        f"import os, site; site.addsitedir({str(Path(path).parent)!r}); "
        f"print(os.environ.get({DEFAULT_PROVISIONER_ENV!r}))"
    )
    env = {k: v for k, v in os.environ.items() if k != DEFAULT_PROVISIONER_ENV}
    run = [sys.executable, "-c", probe]
    seen = subprocess.run(run, env=env, capture_output=True, text=True, check=True)
    assert seen.stdout.strip() == PROVISIONER_NAME
    env[DEFAULT_PROVISIONER_ENV] = LOCAL_PROVISIONER
    seen = subprocess.run(run, env=env, capture_output=True, text=True, check=True)
    assert seen.stdout.strip() == LOCAL_PROVISIONER


def test_limits_beyond_the_host_are_named() -> None:
    gib = 2**30
    assert beyond_host(2 * gib, 1.0, 24 * gib, 2) == []
    warnings = beyond_host(100 * gib, 64.0, 24 * gib, 2)
    assert "100.0 GiB" in warnings[0] and "24.0 GiB" in warnings[0]
    assert "64" in warnings[1] and "2 CPUs" in warnings[1]
