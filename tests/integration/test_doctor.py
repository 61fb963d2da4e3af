"""`sandbox-kernel doctor` passes on this (correctly set up) host and fails, naming the
fix, when runsc is not registered."""

from __future__ import annotations

import json
import os
import subprocess
import sys


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
    assert checks["runtime seen from outside"]["ok"]
    assert checks["gVisor seen from inside"]["ok"]
    attacks = checks["attack subset as documented"]
    assert attacks["ok"] is True, attacks
    tried = int(attacks["detail"].split(" of ")[1].split()[0])
    assert tried >= 30, attacks
    assert "documented gaps of docker: " in attacks["detail"]


def test_doctor_fails_without_runsc_and_names_the_fix(daemon_without_runsc: str) -> None:
    code, report = doctor({"DOCKER_HOST": daemon_without_runsc})
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 1 and not report["ok"]
    runsc = checks["gVisor runtime (runsc) registered"]
    assert runsc["ok"] is False and "setup-host" in runsc["fix"]
    assert checks["sandboxed kernel starts"]["ok"] is None  # not attempted


def test_doctor_fails_when_runsc_lacks_network_none(daemon_with_networked_runsc: str) -> None:
    code, report = doctor({"DOCKER_HOST": daemon_with_networked_runsc})
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 1 and not report["ok"]
    flags = checks["runsc flags"]
    assert flags["ok"] is False and "--oci-seccomp" in flags["detail"]
    assert "--network=none" in flags["fix"] and "setup-host" in flags["fix"]
    assert checks["sandboxed kernel starts"]["ok"] is None  # not attempted
