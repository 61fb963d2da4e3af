"""The isolation policy: sizes, bounds, image references, the environment filter, the
process limits (the Docker backend's translation of it: test_docker_backend.py)."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox_kernel.errors import PolicyError, SandboxError
from sandbox_kernel.image.recipe import DEFAULT_IMAGE
from sandbox_kernel.policy import (
    SANDBOX_HOME,
    SANDBOX_USER,
    check_env_name,
    parse_size,
    validate_image,
)
from tests.helpers import policy

MiB = 2**20
GiB = 2**30


# -- parse_size --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("512m", 512 * MiB),
        ("512M", 512 * MiB),
        ("2g", 2 * GiB),
        ("2G", 2 * GiB),
        ("1.5GiB", int(1.5 * GiB)),
        ("1.5gib", int(1.5 * GiB)),
        ("256MB", 256 * MiB),
        ("64k", 64 * 1024),
        ("1t", 2**40),
        (" 3 g ", 3 * GiB),
        ("1048576", 1048576),
        (1048576, 1048576),
        (1, 1),
    ],
)
def test_parse_size(value: str | int, expected: int) -> None:
    assert parse_size(value, "x") == expected


@pytest.mark.parametrize(
    "value",
    ["", "abc", "2x", "g", "1e9", "-5m", "- 1g", "1..5g", "2 g b", "nan", "inf", "0x10"],
)
def test_parse_size_refuses_bad_strings(value: str) -> None:
    with pytest.raises(PolicyError, match="memory_limit"):
        parse_size(value, "memory_limit")


@pytest.mark.parametrize("value", [0, -1, -(2**31), "0", "0m", "0.0g", "0.1"])
def test_parse_size_refuses_zero_and_negative(value: str | int) -> None:
    with pytest.raises(PolicyError, match="positive"):
        parse_size(value, "tmp_size")


@pytest.mark.parametrize("value", [True, False])
def test_parse_size_refuses_bool(value: bool) -> None:
    with pytest.raises(PolicyError):
        parse_size(value, "memory_limit")


def test_policy_errors_are_sandbox_and_value_errors() -> None:
    assert issubclass(PolicyError, SandboxError)
    assert issubclass(PolicyError, ValueError)


# -- build_policy bounds -------------------------------------------------------------------


def test_defaults_are_valid_and_gvisor() -> None:
    pol = policy()
    assert pol.image == DEFAULT_IMAGE
    assert pol.user == SANDBOX_USER == "1000:1000"
    assert pol.home == SANDBOX_HOME
    assert pol.memory_bytes == 2 * GiB
    assert pol.tmp_bytes == 256 * MiB and pol.home_bytes == 512 * MiB
    assert pol.env_allow == ("TZ",) and dict(pol.env) == {}  # the settings table's defaults


def test_policy_is_frozen() -> None:
    pol = policy()
    with pytest.raises(AttributeError):
        pol.memory_bytes = 1  # type: ignore[misc]


def test_sizes_are_parsed() -> None:
    pol = policy(memory_limit="1g", tmp_size=64 * MiB, home_size="100m", cpu_limit=0.5)
    assert (pol.memory_bytes, pol.tmp_bytes, pol.home_bytes) == (GiB, 64 * MiB, 100 * MiB)
    assert pol.cpus == 0.5


@pytest.mark.parametrize("memory", ["127m", 1, "1k", "1025g", "2t"])
def test_memory_out_of_bounds(memory: str | int) -> None:
    with pytest.raises(PolicyError, match="memory_limit"):
        policy(memory_limit=memory, tmp_size="1m", home_size="1m")


def test_memory_bounds_are_inclusive() -> None:
    policy(memory_limit="128m", tmp_size="1m", home_size="1m")
    policy(memory_limit="1024g")


@pytest.mark.parametrize("cpus", [0, 0.0, -1, -0.5, 0.001, 257, float("nan"), float("inf")])
def test_cpu_out_of_bounds(cpus: float) -> None:
    with pytest.raises(PolicyError, match="cpu_limit"):
        policy(cpu_limit=cpus)


@pytest.mark.parametrize(
    "name, value",
    [
        ("nproc_limit", 15),
        ("nproc_limit", 0),
        ("nproc_limit", -1),
        ("nproc_limit", 65537),
        ("nofile_limit", 63),
        ("nofile_limit", 1048577),
        ("pids_limit", 15),
        ("pids_limit", 4 * 65536 + 1),
    ],
)
def test_process_limits_out_of_range(name: str, value: int) -> None:
    with pytest.raises(PolicyError, match=name):
        policy(**{name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (name, value)
        for name in ("nproc_limit", "nofile_limit", "pids_limit")
        for value in (512.0, "512", None, True)
        if not (name == "nproc_limit" and value is None)  # None: derived from memory
    ],
)
def test_process_limits_must_be_ints(name: str, value: Any) -> None:
    with pytest.raises(PolicyError, match=name):
        policy(**{name: value})


def test_pids_limit_below_nproc_limit_is_refused() -> None:
    with pytest.raises(PolicyError, match="pids_limit must be >= nproc_limit"):
        policy(nproc_limit=1024, pids_limit=1000)
    pol = policy(nproc_limit=1024, pids_limit=1024)
    assert (pol.nproc, pol.pids_limit) == (1024, 1024)


@pytest.mark.parametrize("which", ["tmp_size", "home_size"])
def test_tmpfs_larger_than_memory_is_refused(which: str) -> None:
    with pytest.raises(PolicyError, match=which):
        policy(memory_limit="1g", **{which: "1025m"})
    policy(memory_limit="1g", **{which: "1g"})


@pytest.mark.parametrize("which", ["tmp_size", "home_size"])
def test_tmpfs_smaller_than_a_mebibyte_is_refused(which: str) -> None:
    with pytest.raises(PolicyError, match=which):
        policy(**{which: "512k"})


@pytest.mark.parametrize("timeout", [0, 0.5, 3601, -1, float("nan")])
def test_launch_timeout_bounds(timeout: float) -> None:
    with pytest.raises(PolicyError, match="launch_timeout"):
        policy(launch_timeout=timeout)


# -- image references -----------------------------------------------------------------------

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "image",
    [
        "sandbox-kernel/python:latest",
        "localhost:5000/a/b:1",
        f"python@{DIGEST}",
        f"python:3.12@{DIGEST}",
        "python",
        "ghcr.io/org/sub/image_name:v1.2.3-rc1",
        "docker.io/library/python:3.12-slim",
        "a__b/c--d:TAG_1.x",
    ],
)
def test_valid_images_accepted(image: str) -> None:
    assert validate_image(image) == image
    assert policy(image=image).image == image


@pytest.mark.parametrize(
    "image",
    [
        "",
        "Python",
        "sandbox-kernel/Python:latest",
        "python latest",
        " python",
        "python:latest;rm -rf /",
        "python;rm -rf /",
        "$(id)",
        "python:",
        "python:-tag",
        "python@sha256:abc",
        f"python@sha256:{'A' * 64}",
        "-python",
        "python/",
        "/python",
        "python//x",
        "python:" + "a" * 129,
        "a/" * 127 + "ab",  # 256 characters, otherwise well-formed
    ],
)
def test_invalid_images_refused(image: str) -> None:
    with pytest.raises(PolicyError, match="image"):
        validate_image(image)
    with pytest.raises(PolicyError):
        policy(image=image)


@pytest.mark.parametrize("image", ["python:latest\n", "python\n"])
def test_image_with_trailing_newline_refused(image: str) -> None:
    # ``$`` in the reference regex also matches before a final newline; a
    # reference containing a newline is not a valid Docker reference.
    with pytest.raises(PolicyError):
        validate_image(image)


@pytest.mark.parametrize("image", [None, 42, b"python"])
def test_non_string_image_refused(image: Any) -> None:
    with pytest.raises(PolicyError):
        validate_image(image)


def test_long_image_reference_is_refused_before_the_pattern_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No input can make the reference pattern backtrack for long: it never sees more
    than 255 characters (a property of the code, not a duration that load could stretch)."""
    import sandbox_kernel.policy as policy

    seen: list[int] = []
    real = policy._IMAGE_RE

    class Recording:
        def fullmatch(self, text: str) -> object:
            seen.append(len(text))
            return real.fullmatch(text)

    monkeypatch.setattr(policy, "_IMAGE_RE", Recording())
    for image in ("a" * 100_000, "a-" * 50_000 + "!", "a/" * 50_000 + "!", "a" * 256):
        with pytest.raises(PolicyError):
            validate_image(image)
    assert seen == []
    assert validate_image("a" * 255) == "a" * 255 and seen == [255]  # the pattern still runs


# -- the environment filter --------------------------------------------------------------------

SERVER_ENV = {
    "TZ": "Europe/Paris",
    "HOME": "/home/jupyter",
    "PATH": "/opt/conda/bin:/usr/bin",
    "JPY_SESSION_NAME": "nb.ipynb",
    "JUPYTERHUB_API_TOKEN": "hub-secret",
    "JUPYTER_TOKEN": "server-secret",
    "DOCKER_HOST": "unix:///var/run/docker.sock",
    "AWS_SECRET_ACCESS_KEY": "aws",
    "GITHUB_TOKEN": "gh",
    "LD_PRELOAD": "/evil.so",
    "USER": "jupyter",
    "MY_SETTING": "1",
}


def test_kernel_env_contains_only_basics_and_allow_listed_server_vars() -> None:
    pol = policy(env_allow=["TZ", "MY_SETTING", "NOT_SET_ON_SERVER"])
    env = pol.kernel_env(SERVER_ENV, {})
    assert env == {
        "HOME": SANDBOX_HOME,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "JPY_PARENT_PID": "1",  # ipykernel: no banner, no parent poller (see kernel_env)
        "TZ": "Europe/Paris",
        "MY_SETTING": "1",
    }
    for secret in ("hub-secret", "server-secret", "aws", "gh", "/evil.so", "/home/jupyter"):
        assert secret not in env.values()


def test_kernel_env_without_allow_list_takes_nothing_from_the_server() -> None:
    env = policy(env_allow=[]).kernel_env(SERVER_ENV, {})
    assert set(env) == {"HOME", "PATH", "LANG", "PYTHONUNBUFFERED", "JPY_PARENT_PID"}
    assert env["HOME"] == SANDBOX_HOME


def test_kernel_env_adds_kernelspec_env_then_policy_env() -> None:
    pol = policy(env={"A": "policy", "B": "policy"})
    env = pol.kernel_env(SERVER_ENV, {"A": "spec", "C": "spec", "MPLBACKEND": "Agg"})
    assert env["A"] == "policy" and env["B"] == "policy" and env["C"] == "spec"
    assert env["MPLBACKEND"] == "Agg"
    assert "JPY_SESSION_NAME" not in env and "USER" not in env


def test_kernel_env_values_are_strings() -> None:
    env = policy().kernel_env({}, {"N": 3})  # type: ignore[dict-item]
    assert env["N"] == "3"


FORBIDDEN = [
    "JPY_SESSION_NAME",
    "JPY_API_TOKEN",
    "JUPYTERHUB_API_TOKEN",
    "JUPYTERHUB_USER",
    "JUPYTER_TOKEN",
    "JUPYTER_CONFIG_DIR",
    "DOCKER_HOST",
    "DOCKER_CERT_PATH",
    "SANDBOX_KERNEL_DEBUG",
    "AWS_SECRET_ACCESS_KEY",
    "GITHUB_TOKEN",
    "MY_PASSWORD",
    "DB_PASSWD",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "OPENAI_API_KEY",
    "api_token",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "PYTHONEXECUTABLE",
]


@pytest.mark.parametrize("name", FORBIDDEN)
def test_forbidden_names_in_env_allow_are_refused(name: str) -> None:
    with pytest.raises(PolicyError, match="env_allow"):
        policy(env_allow=[name])


@pytest.mark.parametrize("name", FORBIDDEN)
def test_forbidden_names_in_policy_env_are_refused(name: str) -> None:
    with pytest.raises(PolicyError, match="env"):
        policy(env={name: "x"})


@pytest.mark.parametrize("name", FORBIDDEN)
def test_forbidden_names_in_kernelspec_env_are_refused(name: str) -> None:
    with pytest.raises(PolicyError, match="kernelspec env"):
        policy().kernel_env(SERVER_ENV, {name: "x"})


@pytest.mark.parametrize(
    "name", ["", "1ABC", "A-B", "A B", "A=B", "A.B", "\u00e9T\u00c9", "A\x00", "A\nB", "FOO\n"]
)
def test_invalid_env_names_are_refused(name: str) -> None:
    with pytest.raises(PolicyError, match="not a valid environment variable name"):
        check_env_name(name, "env")
    with pytest.raises(PolicyError):
        policy(env={name: "x"})
    with pytest.raises(PolicyError):
        policy(env_allow=[name])
    with pytest.raises(PolicyError):
        policy().kernel_env({}, {name: "x"})


@pytest.mark.parametrize("name", ["TZ", "_X", "MPLBACKEND", "a1_B2", "PYTHONHASHSEED"])
def test_ordinary_env_names_are_accepted(name: str) -> None:
    check_env_name(name, "env")
    assert policy(env={name: "v"}).kernel_env({}, {})[name] == "v"


@pytest.mark.parametrize(
    ("memory", "expected"), [("2g", 64), ("1g", 32), ("256m", 32), ("8g", 256), ("64g", 1024)]
)
def test_default_nproc_follows_memory(memory: str, expected: int) -> None:
    """A fork of a kernel costs ~27 MiB under gVisor: the default leaves room for a fork bomb
    to meet EAGAIN before the memory cap."""
    assert policy(memory_limit=memory, tmp_size="16m", home_size="16m").nproc == expected


def test_explicit_nproc_wins() -> None:
    assert policy(memory_limit="2g", nproc_limit=300).nproc == 300
