"""``sandbox-kernel doctor``: is this host really giving kernels the sandbox?

For one backend (``--backend``, default docker = gVisor), through the backend interface
only, each check with what to do when it fails: what the backend cannot enforce here
(``gaps``: fatal when files, network or the user would be the host's); its launch
preflight (for Docker: the daemon, runsc and its flags, the image); a sandboxed kernel
starts through jupyter_client; the sandbox runs what was asked for, seen from outside
(where the backend can tell, e.g. Docker's container runtime) and from inside (gVisor's
kernel release, not the host's); then every self-contained attack of
:mod:`sandbox_kernel.security.attacks` runs in that kernel and must end as the gap table
(:mod:`sandbox_kernel.security.expectations`) says. Later checks are skipped (and reported
as such) when an earlier one they need failed. The CLI prints the report, or JSON with
``--json``; any failure makes the exit code 1.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

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


def _run(kc: Any, code: str, timeout: float = 60) -> str:
    chunks: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            chunks.append(msg["content"]["text"])

    kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    return "".join(chunks)


# Without these, nothing is isolated: no kernel is started to look further.
FATAL = frozenset({"host_files", "network", "unprivileged_user"})


def _host_checks(report: Report, image: str, backend: str) -> tuple[dict[str, Any], Any] | None:
    """What the backend finds on this host (``gaps``, then its launch ``preflight``); the
    kernelspec config to start (accepting exactly the gaps found, which are reported) and
    the preflight, or None when nothing can run."""
    import asyncio
    import logging

    from .configured import configure

    config: dict[str, Any] = {"image": image, "backend": backend}
    log = logging.getLogger(__name__)
    conf = configure(config, log)
    policy = conf.policy
    try:
        gaps = dict(conf.sandbox_backend.gaps(policy))
    except SandboxError as exc:
        report.add(f"{backend}: host ready", False, str(exc), SETUP)
        return None
    fatal = sorted(set(gaps) & FATAL)
    report.add(
        f"{backend} enforces the policy here", not fatal,
        "every property" if not gaps else "NOT enforced: " + "; ".join(
            f"{k} ({v})" for k, v in sorted(gaps.items())),
        "see the reasons; kernels refuse to start unless accept_unenforced lists them",
    )  # fmt: skip
    if fatal:
        return None
    if gaps:
        config["accept_unenforced"] = sorted(gaps)
    try:
        chosen = configure(config, log).sandbox_backend
        preflight = asyncio.run(chosen.preflight(policy))
    except SandboxError as exc:
        report.add(f"{backend}: host ready", False, str(exc), "see the error; then re-run doctor")
        return None
    snapshots = chosen.snapshots()
    pool = (
        "; the warm pool restores its sandboxes from a snapshot"
        if snapshots.available
        else f"; note: {snapshots.note}"
        if snapshots.note
        else ""
    )
    report.add(
        f"{backend}: host ready", True,
        f"runs sandboxes with {preflight.runtime}"
        + (f"; warns: {' '.join(preflight.warnings)}" if preflight.warnings else "") + pool,
    )  # fmt: skip
    return config, preflight


def _kernelspec_check(report: Report) -> None:
    """Which kernelspec Jupyter here resolves ``python3`` (what notebooks ask for by
    default) and ``sandbox-python`` to, with the settings each applies: a notebook naming
    an unsandboxed ``python3`` would open on the host."""
    from .kernelspec import DEFAULT_KERNEL_NAME, NOTEBOOK_DEFAULT_NAME, effective_kernelspecs

    found = effective_kernelspecs([NOTEBOOK_DEFAULT_NAME, DEFAULT_KERNEL_NAME])
    seen = []
    for name, (folder, config) in found.items():
        if not folder:
            seen.append(f"{name}: not installed")
        elif config is None:
            seen.append(f"{name} -> {folder}: NOT sandboxed (the host's ipykernel)")
        else:
            given = ", ".join(f"{k}={v}" for k, v in sorted(config.items())) or "defaults"
            seen.append(f"{name} -> {folder}: sandboxed ({given})")
    report.add(
        f"notebooks naming {NOTEBOOK_DEFAULT_NAME} run sandboxed",
        found[NOTEBOOK_DEFAULT_NAME][1] is not None,
        "; ".join(seen),
        f"`sandbox-kernel install --sys-prefix --name {NOTEBOOK_DEFAULT_NAME} --replace` (or "
        "--user outside a venv): until then a notebook that names python3 runs on the host",
    )


def run_doctor(
    image: str = DEFAULT_IMAGE,
    progress: Callable[[str], None] | None = None,
    backend: str = "docker",
) -> Report:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    from .backends.releases import runtime_release
    from .kernelspec import build_kernelspec
    from .policy import GVISOR_RUNTIMES
    from .security.expectations import GVISOR_BACKENDS, RELEASE_UNKNOWN, gaps_of, undecided

    say = progress or (lambda _msg: None)
    report = Report()
    later = ["sandboxed kernel starts", "seen from outside", "seen from inside",
             "attack subset as documented"]  # fmt: skip
    _kernelspec_check(report)
    say(f"checking the host for the {backend} backend")
    found = _host_checks(report, image, backend)
    if found is None:
        for name in later:
            report.add(name, None, "not run: an earlier check failed")
        return report
    config, preflight = found
    with tempfile.TemporaryDirectory(prefix="sandbox-doctor-") as tmp:
        os.mkdir(os.path.join(tmp, "doctor"))
        with open(os.path.join(tmp, "doctor", "kernel.json"), "w") as f:
            json.dump(build_kernelspec({**config, "pool_size": 0}), f)
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
            chosen = km.provisioner.sandbox_backend  # type: ignore[union-attr]
            sandbox_id = km.provisioner.sandbox_id  # type: ignore[union-attr]
            seen = chosen.inspect(sandbox_id) if chosen and sandbox_id else {}
            if "runtime" in seen:
                report.add(
                    "seen from outside", seen["runtime"] == preflight.runtime,
                    f"the sandbox runs under {seen['runtime']}",
                    f"{preflight.runtime} was asked for and not used: check the backend's setup",
                )  # fmt: skip
            inside = _run(kc, "import platform; print(platform.release())").strip()
            host = os.uname().release
            if preflight.foreign_kernel:
                report.add(
                    "seen from inside", bool(inside) and inside != host,
                    f"kernel release inside {inside!r}, host {host!r}",
                    "the sandbox runs on the host kernel: gVisor is not in effect",
                )  # fmt: skip
            else:
                report.add(
                    "seen from inside", True,
                    f"the host's kernel ({inside}): a weaker tier, as chosen",
                )  # fmt: skip
            # gVisor's gaps are those of the release the kernel runs on; docker without
            # gVisor (allow_weaker_runtime, no runsc registered) is docker-runc's table.
            table, release = backend, None
            known = backend in GVISOR_BACKENDS and backend not in RELEASE_UNKNOWN
            if known and preflight.runtime in GVISOR_RUNTIMES:
                try:
                    release = runtime_release(backend, preflight.runtime)
                except SandboxError as exc:
                    report.add("attack subset as documented", False, str(exc), SETUP)
                    return report
            elif backend == "docker":
                table = "docker-runc"
            _judge_attacks(
                report, kc, backend, gaps_of(table, release), say, either=undecided(table),
                fix="update the sandbox (runsc, the tool) and re-run setup-host; report the attack"
                if preflight.foreign_kernel
                else "compare with docs/security.md (weaker backends); report the attack",
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
    either: frozenset[str] = frozenset(),
) -> None:
    """Each self-contained attack must end as the backend's gap table says: blocked, or
    (a documented gap) not blocked; those of ``either`` (gaps of a gVisor release the
    backend cannot know) may end either way, and are reported as seen."""
    verdicts = _verdicts(kc, say)
    tried = len(verdicts)
    wrong, known, seen = [], [], []
    for attack_id, verdict in verdicts.items():
        blocked = verdict.get("blocked")
        if attack_id in either and isinstance(blocked, bool):
            seen.append(f"{attack_id} {'blocked' if blocked else 'NOT blocked'}")
            if not blocked:
                known.append(attack_id)
        elif attack_id in gaps and blocked is False:
            known.append(attack_id)
        elif blocked is not (attack_id not in gaps):
            wrong.append(f"{attack_id} ({verdict.get('detail', 'no verdict')})")
    differs = f"; NOT as documented: {'; '.join(wrong)}" if wrong else ""
    if seen:
        differs += f"; depending on the node's gVisor release: {', '.join(seen)}"
    report.add(
        "attack subset as documented", not wrong,
        f"{tried - len(known) - len(wrong)} of {tried} blocked; documented gaps of {backend}: "
        f"{', '.join(known) or 'none'}{differs}",
        fix,
    )  # fmt: skip
