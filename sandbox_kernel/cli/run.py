"""``sandbox-kernel run``: execute a notebook in a sandboxed kernel (nbclient)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from ..errors import SandboxError


def _text_of(output: Any) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        return str(output.get("text", ""))
    if kind in ("execute_result", "display_data"):
        data = output.get("data", {})
        if "image/png" in data:
            return f"[image/png, {len(data['image/png'])} base64 chars]\n"
        return str(data.get("text/plain", "")) + "\n"
    if kind == "error":
        return f"{output.get('ename')}: {output.get('evalue')}\n"
    return ""


def run_notebook(path: str, *, kernel_name: str, output: str | None, timeout: float) -> int:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    try:
        nb = nbformat.read(path, as_version=4)
    except OSError as exc:
        raise SandboxError(f"cannot read notebook {path}: {exc.strerror}") from None
    except Exception as exc:
        raise SandboxError(f"{path} is not a readable notebook: {exc}") from None
    # The kernel starts "in" the notebook's folder, as in Jupyter: copy_in paths and
    # exported files are relative to it.
    folder = os.path.dirname(os.path.abspath(path))
    client = NotebookClient(
        nb,
        kernel_name=kernel_name,
        timeout=int(timeout),
        allow_errors=False,
        resources={"metadata": {"path": folder}},
    )
    started = time.monotonic()
    try:
        client.execute()
    except CellExecutionError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except Exception as exc:
        raise SandboxError(f"could not run {path} in kernel {kernel_name!r}: {exc}") from exc
    finally:
        if output:
            nbformat.write(nb, output)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        text = "".join(_text_of(o) for o in cell.get("outputs", []))
        if text.strip():
            print(f"--- cell {i} ---\n{text.rstrip()}")
    print(f"ran {path} in kernel {kernel_name!r} in {time.monotonic() - started:.1f} s")
    return 0
