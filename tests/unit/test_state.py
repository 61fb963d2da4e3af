"""The backends' per-user state folders outside a hub: a folder another user took first
(the predictable /tmp name, or an XDG_RUNTIME_DIR that is not ours) is refused with its
owner and the fix, and nothing else is tried in its place."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_kernel.backends import state
from sandbox_kernel.errors import SandboxError

OTHER_UID = 64_000 + secrets.randbelow(1000)  # "this server's" uid; the files are ours


@pytest.fixture
def as_other_uid(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """state.py sees a server of uid OTHER_UID; yields a kind of state of this test only."""
    kind = f"unittest{secrets.token_hex(3)}"
    monkeypatch.setattr(os, "geteuid", lambda: OTHER_UID)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    yield kind
    shutil.rmtree(f"/tmp/sandbox-kernel-{kind}-{OTHER_UID}", ignore_errors=True)


def test_a_squatted_tmp_folder_names_its_owner_and_the_fix(as_other_uid: str) -> None:
    squatted = Path(f"/tmp/sandbox-kernel-{as_other_uid}-{OTHER_UID}")
    squatted.mkdir(mode=0o700)  # by "another user": this process's own uid
    with pytest.raises(SandboxError) as refused:
        state.state_base(as_other_uid)
    message = str(refused.value)
    me = f"(uid {os.getuid()})"  # the owner: this process (geteuid is patched)
    assert str(squatted) in message and me in message, message
    assert "Another user" in message and f"sudo rm -rf {squatted}" in message, message
    assert "XDG_RUNTIME_DIR" in message, message


def test_an_xdg_runtime_dir_of_someone_else_is_refused_not_passed_over(
    as_other_uid: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # not OTHER_UID's
    with pytest.raises(SandboxError, match=f"XDG_RUNTIME_DIR is not a private folder.*{tmp_path}"):
        state.state_base(as_other_uid)
    assert not Path(f"/tmp/sandbox-kernel-{as_other_uid}-{OTHER_UID}").exists(), "fell back"
