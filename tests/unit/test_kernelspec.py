"""Kernelspec install where it takes effect: a spec Jupyter would never find (shadowed by
one of the same name earlier in its search path) is refused before anything is written;
limits larger than the host are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox_kernel.errors import SandboxError
from sandbox_kernel.kernelspec import (
    beyond_host,
    build_kernelspec,
    effective_kernelspecs,
    install_kernelspec,
    shadowed_by,
)


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


def test_effective_kernelspecs_tells_sandboxed_from_host(search_path: tuple[Path, Path]) -> None:
    earlier_dir, _ = search_path
    make_spec(earlier_dir, "python3", {"argv": ["python3"], "metadata": {}})
    make_spec(earlier_dir, "sandbox-python", build_kernelspec({"memory_limit": "1g"}))
    found = effective_kernelspecs(["python3", "sandbox-python", "absent"])
    assert found["python3"] == (str(earlier_dir / "python3"), None)
    assert found["sandbox-python"] == (str(earlier_dir / "sandbox-python"), {"memory_limit": "1g"})
    assert found["absent"] == ("", None)


def test_limits_beyond_the_host_are_named() -> None:
    gib = 2**30
    assert beyond_host(2 * gib, 1.0, 24 * gib, 2) == []
    warnings = beyond_host(100 * gib, 64.0, 24 * gib, 2)
    assert "100.0 GiB" in warnings[0] and "24.0 GiB" in warnings[0]
    assert "64" in warnings[1] and "2 CPUs" in warnings[1]
