"""Bring one sandbox up to a running agent: create, attach, start, deliver, verify.

Shared by the provisioner's cold start and the warm pool's refills; ``restore`` is the
warm pool's other way, a sandbox restored from a snapshot (its agent and pre-initialised
kernel already run: no bundle is sent, the agent answers ``resume`` instead of saying
hello). On any failure (or cancellation by a launch timeout) the sandbox is removed
before the exception propagates, so a caller never has to clean up after either.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from .backends.base import Preflight, SandboxBackend
from .backends.owner import Owner
from .bundle import agent_payload, bootstrap_command
from .errors import SandboxError
from .inside import protocol
from .policy import SandboxPolicy
from .relay.session import AgentSession
from .relay.thread import RelayThread


async def boot(
    backend: SandboxBackend,
    policy: SandboxPolicy,
    preflight: Preflight,
    session: AgentSession,
    *,
    name: str,
    owner: Owner,
) -> str:
    """Return the id of a started sandbox whose agent said a valid hello to ``session``."""
    relay = RelayThread.get()
    sandbox_id = await backend.create(
        policy, preflight, command=bootstrap_command(), owner=owner, name=name
    )
    try:
        await backend.attach(sandbox_id, session)
        await backend.start(sandbox_id)
        kernel_user = policy.user if preflight.kernel_user_apart else None
        rlimits = kernel_rlimits(policy) if preflight.agent_rlimits else {}
        hello = await relay.run(_send_agent(session, kernel_user, rlimits))
        check_hello(hello, preflight)
        if not hello.get("helpers"):
            session.log.warning(
                "%s: the agent's socket is not available: the `sandboxed` module will fail",
                session.describe(),
            )
        session.hello_info = hello
    except BaseException:
        relay.loop.call_soon_threadsafe(session.close)
        await asyncio.shield(backend.remove(sandbox_id))
        raise
    return sandbox_id


async def restore(
    backend: SandboxBackend,
    snapshot: str,
    policy: SandboxPolicy,
    preflight: Preflight,
    session: AgentSession,
    *,
    name: str,
    owner: Owner,
) -> str:
    """Return the id of a sandbox restored from ``snapshot`` whose agent answered
    ``resume`` with the facts a hello must have, and whose pre-initialised kernel runs
    under a uid the policy allows."""
    relay = RelayThread.get()
    sandbox_id = await backend.restore(snapshot, policy, preflight, owner=owner, name=name)
    try:
        await backend.attach(sandbox_id, session)
        await backend.start(sandbox_id)
        facts = await relay.run(session.resume())
        check_hello(facts, preflight)
        if not facts["prewarmed"]:
            raise SandboxError("the restored sandbox holds no pre-initialised kernel")
        kernel = {"pid": facts["kernel_pid"], "uid": facts["kernel_process_uid"]}
        check_kernel(kernel, facts, preflight)
        session.hello_info = facts
    except BaseException:
        relay.loop.call_soon_threadsafe(session.close)
        await asyncio.shield(backend.remove(sandbox_id))
        raise
    return sandbox_id


def kernel_rlimits(policy: SandboxPolicy) -> dict[str, int]:
    """The resource limits the agent sets on the kernel where the sandbox sets none
    (``Preflight.agent_rlimits``): the policy's, as the Docker backend's ulimits under
    gVisor (which counts RLIMIT_NPROC per sandbox), and no core files."""
    return {"nproc": policy.nproc, "nofile": policy.nofile, "core": 0}


async def _send_agent(
    session: AgentSession, kernel_user: str | None, rlimits: dict[str, int]
) -> dict[str, Any]:
    """On the relay loop: send the agent over stdin and wait for its hello."""
    assert session.hello is not None
    session.send_agent(
        agent_payload(
            escaped_stdin=session.escape_stdin,
            kernel_user=kernel_user,
            kernel_rlimits=tuple(sorted(rlimits.items())),
        )
    )
    return await session.hello


def check_hello(hello: dict[str, Any], preflight: Preflight) -> None:
    """Refuse a sandbox that is not what the policy asked for."""
    if hello.get("version") != protocol.VERSION:
        raise SandboxError(
            f"agent speaks protocol {hello.get('version')}, expected {protocol.VERSION}"
        )
    if preflight.kernel_user_apart and hello.get("uid") != 0:
        raise SandboxError(
            f"the sandbox's agent runs as uid {hello.get('uid')}, not as the sandbox's root: it "
            "could not run the kernel under a uid of its own; refusing"
        )
    if not preflight.kernel_user_apart and hello.get("uid") == 0:
        raise SandboxError(
            "the sandbox's agent runs as root, and the kernel would too; refusing (the policy's "
            "user is unprivileged)"
        )
    if not preflight.kernel_user_apart and not hello.get("undumpable"):
        # The kernel shares the agent's uid there: only PR_SET_DUMPABLE keeps the host
        # kernel from handing it the agent's pipe through /proc/<agent>/fd.
        raise SandboxError(
            "the sandbox's agent could not make itself undumpable, so the kernel could open "
            "its pipe to the host; refusing"
        )
    if preflight.foreign_kernel and hello.get("release") == os.uname().release:
        raise SandboxError(
            f"the sandbox should run its own kernel ({preflight.runtime}) but reports the "
            f"host's ({hello.get('release')}): gVisor is not in effect; check the runtime's "
            "setup (`sandbox-kernel doctor`)"
        )


def check_kernel(facts: dict[str, Any], hello: dict[str, Any], preflight: Preflight) -> None:
    """Refuse a kernel that runs as root, or (where the backend keeps them apart) under the
    agent's own uid; ``facts`` is the agent's ``started``/``prewarmed`` report, read from
    the sandbox's /proc."""
    uid = facts.get("uid")
    if not isinstance(uid, int) or isinstance(uid, bool) or uid < 0:
        raise SandboxError(f"the sandbox did not report the kernel's uid ({uid!r}); refusing")
    if uid == 0:
        raise SandboxError("the kernel runs as root inside the sandbox; refusing")
    if preflight.kernel_user_apart and uid == hello.get("uid"):
        raise SandboxError(
            f"the kernel runs under the agent's own uid {uid}: it could reach the agent's "
            "pipe; refusing"
        )


async def start_kernel(session: AgentSession, start: dict[str, Any]) -> dict[str, Any]:
    """On the relay loop: ask the agent to start the kernel, wait until it has, and return
    the agent's report (pid, uid)."""
    assert session.started is not None
    session.send_control(start)
    return await session.started
