"""`sandbox-kernel doctor` passes on this (correctly set up) host and fails, naming the
fix, when runsc is not registered."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import DEFAULT_RUNTIME


def doctor(env: dict[str, str] | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox_kernel.cli.main", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    return proc.returncode, json.loads(proc.stdout)


def test_doctor_passes_here(docker_client) -> None:  # type: ignore[no-untyped-def]
    code, report = doctor()
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 0 and report["ok"], json.dumps(report, indent=2)
    assert checks["docker enforces the policy here"]["ok"]
    assert checks["docker: host ready"]["ok"] and "runsc" in checks["docker: host ready"]["detail"]
    assert checks["seen from outside"]["ok"], checks["seen from outside"]  # Docker's runtime: runsc
    assert checks["seen from inside"]["ok"]
    attacks = checks["attack subset as documented"]
    assert attacks["ok"] is True, attacks
    tried = int(attacks["detail"].split(" of ")[1].split()[0])
    assert tried >= 30, attacks
    assert "documented gaps of docker: " in attacks["detail"]


def test_doctor_fails_without_runsc_and_names_the_fix(daemon_without_runsc: str) -> None:
    code, report = doctor({"DOCKER_HOST": daemon_without_runsc})
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 1 and not report["ok"]
    ready = checks["docker: host ready"]
    assert ready["ok"] is False and f"no {DEFAULT_RUNTIME!r} runtime" in ready["detail"], ready
    assert "setup-host" in ready["detail"]
    assert checks["sandboxed kernel starts"]["ok"] is None  # not attempted


def test_doctor_fails_when_runsc_lacks_network_none(daemon_with_networked_runsc: str) -> None:
    code, report = doctor({"DOCKER_HOST": daemon_with_networked_runsc})
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 1 and not report["ok"]
    ready = checks["docker: host ready"]
    assert ready["ok"] is False and "without --network=none" in ready["detail"], ready
    assert "setup-host" in ready["detail"]
    assert checks["sandboxed kernel starts"]["ok"] is None  # not attempted
