"""``sandbox-kernel doctor``: is this host really giving kernels the sandbox?

Checks, in order, each with what to do when it fails: the Docker daemon answers;
``runsc`` is registered with the flags the sandbox needs; the kernel image is
there; a sandboxed kernel starts through jupyter_client; Docker ran it with
runsc (seen from outside) and the kernel sees gVisor's kernel, not the host's
(seen from inside); then every self-contained attack of
:mod:`sandbox_kernel.security.attacks` runs in that kernel and must be blocked.
Later checks are skipped (and reported as such) when an earlier one they need
failed. The CLI prints the report, or JSON with ``--json``; any failure makes
the exit code 1.

With ``--backend runsc|bwrap|firejail|docker-runc`` the host checks are that backend's
(tool, root filesystem, every policy property it can enforce here) and the attack
subset is judged against the backend's documented gaps
(:mod:`sandbox_kernel.security.expectations`): a documented gap is reported, not
failed; any other difference fails.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .backends.docker import REQUIRED_RUNSC_ARGS, daemon_unreachable
from .errors import SandboxError
from .image.recipe import DEFAULT_IMAGE

SETUP = "run `sudo sandbox-kernel setup-host`"


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not run, because a check it depends on failed
    detail: str = ""
    fix: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool | None, detail: str = "", fix: str = "") -> bool:
        self.checks.append(Check(name, ok, detail, "" if ok else fix))
        return bool(ok)

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, "checks": [asdict(c) for c in self.checks]}, indent=2)

    def to_text(self) -> str:
        lines = []
        for c in self.checks:
            mark = {True: "PASS", False: "FAIL", None: "SKIP"}[c.ok]
            lines.append(f"[{mark}] {c.name}" + (f": {c.detail}" if c.detail else ""))
            if c.fix:
                lines.append(f"       fix: {c.fix}")
        passed = sum(1 for c in self.checks if c.ok)
        lines.append(
            f"{passed} of {len(self.checks)} checks passed" + ("" if self.ok else "; see fixes")
        )
        return "\n".join(lines)


def _daemon_checks(report: Report, image: str) -> Any:
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
        info = client.info()
    except docker.errors.DockerException as exc:
        report.add("Docker daemon reachable", False, str(exc), daemon_unreachable(exc))
        return None
    report.add("Docker daemon reachable", True, f"dockerd {info.get('ServerVersion', '?')}")
    runtimes = info.get("Runtimes") or {}
    if "runsc" not in runtimes:
        report.add(
            "gVisor runtime (runsc) registered",
            False,
            f"runtimes: {', '.join(sorted(runtimes))}",
            f"{SETUP}; it installs runsc and registers it in /etc/docker/daemon.json",
        )
        return None
    args = (runtimes["runsc"] or {}).get("runtimeArgs") or []
    report.add("gVisor runtime (runsc) registered", True, (runtimes["runsc"] or {}).get("path", ""))
    missing = [a for a in REQUIRED_RUNSC_ARGS if a not in args]
    if not report.add(
        "runsc flags", not missing, f"runtimeArgs {args}",
        f"{SETUP}; runsc needs {' '.join(REQUIRED_RUNSC_ARGS)}",
    ):  # fmt: skip
        return None
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        report.add("kernel image present", False, image, "run `sudo sandbox-kernel image build`")
        return None
    report.add("kernel image present", True, image)
    return client


def _run(kc: Any, code: str, timeout: float = 60) -> str:
    chunks: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            chunks.append(msg["content"]["text"])

    kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    return "".join(chunks)


def _pipe_checks(report: Report, image: str, backend: str) -> dict[str, Any] | None:
    """runsc/bwrap/firejail: what the backend's preflight finds; the kernelspec config to start,
    accepting exactly the gaps found (they are reported), or None when it cannot run."""
    import logging

    from .backends.registry import make_backend
    from .policy import build_policy

    sandboxes = make_backend(backend, logging.getLogger(__name__))
    try:
        _rootfs, gaps = sandboxes.gaps(build_policy(image=image))  # type: ignore[attr-defined]
    except SandboxError as exc:
        report.add(f"{backend} installed, root filesystem present", False, str(exc), SETUP)
        return None
    report.add(f"{backend} installed, root filesystem present", True, image)
    fatal = sorted(set(gaps) & {"host_files", "network", "unprivileged_user"})
    report.add(
        f"{backend} enforces the policy here", not fatal,
        "every property" if not gaps else "NOT enforced: " + "; ".join(
            f"{k} ({v})" for k, v in sorted(gaps.items())),
        "see the reasons; kernels refuse to start unless accept_unenforced lists them",
    )  # fmt: skip
    if fatal:
        return None
    return {"image": image, "backend": backend, "accept_unenforced": sorted(gaps)}


def run_doctor(
    image: str = DEFAULT_IMAGE,
    progress: Callable[[str], None] | None = None,
    backend: str = "docker",
) -> Report:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    from .kernelspec import build_kernelspec
    from .security.expectations import GAPS

    say = progress or (lambda _msg: None)
    report = Report()
    later = ["sandboxed kernel starts", "runtime seen from outside", "gVisor seen from inside",
             "attack subset as documented"]  # fmt: skip
    config: dict[str, Any] | None = {"image": image}
    client: Any = None
    if backend == "docker":
        say("checking the Docker daemon")
        config = config if (client := _daemon_checks(report, image)) is not None else None
    else:
        later = ["sandboxed kernel starts", "attack subset as documented"]
        if backend == "docker-runc":
            config = {"image": image, "backend": backend}
        else:
            say(f"checking {backend}")
            config = _pipe_checks(report, image, backend)
    if config is None:
        for name in later:
            report.add(name, None, "not run: an earlier check failed")
        return report
    with tempfile.TemporaryDirectory(prefix="sandbox-doctor-") as tmp:
        os.mkdir(os.path.join(tmp, "doctor"))
        with open(os.path.join(tmp, "doctor", "kernel.json"), "w") as f:
            json.dump(build_kernelspec(config), f)
        km = KernelManager(
            kernel_name="doctor", kernel_spec_manager=KernelSpecManager(kernel_dirs=[tmp])
        )
        say("starting a sandboxed kernel")
        t0 = time.monotonic()
        try:
            km.start_kernel()
            kc = km.client()
            kc.start_channels()
            kc.wait_for_ready(timeout=60)
        except (SandboxError, RuntimeError) as exc:
            report.add(
                "sandboxed kernel starts", False, str(exc), "see the error; then re-run doctor"
            )
            for name in later[1:]:
                report.add(name, None, "not run: the kernel did not start")
            if km.has_kernel:
                km.shutdown_kernel(now=True)
            return report
        try:
            report.add("sandboxed kernel starts", True, f"ready in {time.monotonic() - t0:.1f} s")
            if backend != "docker":
                _judge_attacks(report, kc, backend, GAPS[backend], say)
                return report
            cid = km.provisioner._container_id  # type: ignore[union-attr]
            runtime = client.containers.get(cid).attrs["HostConfig"].get("Runtime")
            report.add(
                "runtime seen from outside", runtime == "runsc", f"container runtime: {runtime}",
                "the daemon did not use runsc: check /etc/docker/daemon.json",
            )  # fmt: skip
            inside = _run(kc, "import platform; print(platform.release())").strip()
            host = os.uname().release
            report.add(
                "gVisor seen from inside", bool(inside) and inside != host,
                f"kernel release inside {inside!r}, host {host!r}",
                "the sandbox runs on the host kernel: gVisor is not in effect",
            )  # fmt: skip
            _judge_attacks(
                report, kc, backend, GAPS[backend], say,
                fix="update gVisor (runsc) and re-run setup-host; report the attack",
            )  # fmt: skip
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    return report


def _verdicts(kc: Any, say: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Attack id -> verdict from inside, for every self-contained attack of the catalogue."""
    from .security.attacks import ATTACKS

    say("running the attack subset")
    verdicts: dict[str, dict[str, Any]] = {}
    for attack in ATTACKS:
        if attack.needs:
            continue
        out = _run(kc, attack.code, timeout=120).strip().splitlines()
        try:
            verdict = json.loads(out[-1]) if out else {}
        except ValueError:
            verdict = {}
        verdicts[attack.id] = verdict if isinstance(verdict, dict) else {}
    return verdicts


def _judge_attacks(
    report: Report,
    kc: Any,
    backend: str,
    gaps: dict[str, str],
    say: Callable[[str], None],
    fix: str = "compare with docs/security.md (weaker backends); report the attack",
) -> None:
    """Each self-contained attack must end as the backend's gap table says: blocked, or
    (a documented gap) not blocked."""
    verdicts = _verdicts(kc, say)
    tried = len(verdicts)
    wrong, known = [], []
    for attack_id, verdict in verdicts.items():
        blocked = verdict.get("blocked")
        if attack_id in gaps and blocked is False:
            known.append(attack_id)
        elif blocked is not (attack_id not in gaps):
            wrong.append(f"{attack_id} ({verdict.get('detail', 'no verdict')})")
    differs = f"; NOT as documented: {'; '.join(wrong)}" if wrong else ""
    report.add(
        "attack subset as documented", not wrong,
        f"{tried - len(known) - len(wrong)} of {tried} blocked; documented gaps of {backend}: "
        f"{', '.join(known) or 'none'}{differs}",
        fix,
    )  # fmt: skip
