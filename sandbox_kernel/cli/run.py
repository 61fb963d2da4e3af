"""``sandbox-kernel run``: execute a notebook in a sandboxed kernel (nbclient).

Each output is printed as the kernel sends it (a ``--- cell N ---`` line before a cell's
first output; escaped as the kernel's console is), so a long notebook shows progress.
The exit code says how it went (the README's Commands section): EXIT_OK,
EXIT_CELL_FAILED (a cell raised; with ``allow_errors`` every cell still ran), EXIT_LIMIT
(the kernel was stopped by a limit the host knows of, e.g. its memory: the reason is
printed), EXIT_INTERRUPTED (Ctrl-C: the kernel is shut down first). The output notebook,
if asked for, is written in every case, with what ran so far. Tracebacks are written
without terminal colour codes.

Who calls what: ``cli/main.py``'s ``run`` command calls :func:`run_notebook`.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from nbclient import NotebookClient

from ..errors import SandboxError
from ..relay.console import printable
from ..relay.iopub import ENAME, stopped_text

EXIT_OK = 0
EXIT_CELL_FAILED = 1
EXIT_LIMIT = 3
EXIT_INTERRUPTED = 130

# Terminal escape sequences (IPython colours tracebacks with SGR codes); as nbconvert's
# strip_ansi filter does for text formats.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def text_of(output: Any) -> str:
    """One output as plain text for the terminal."""
    kind = output.get("output_type")
    if kind == "stream":
        return str(output.get("text", ""))
    if kind in ("execute_result", "display_data"):
        data = output.get("data", {})
        if "image/png" in data:
            return f"[image/png, {len(data['image/png'])} base64 chars]\n"
        return str(data.get("text/plain", "")) + "\n"
    if kind == "error":
        return (
            "\n".join(output.get("traceback") or [f"{output.get('ename')}: {output.get('evalue')}"])
            + "\n"
        )
    return ""


def plain(output: Any) -> Any:
    """Strip the colour codes of an error output's traceback, in place: the notebook
    file keeps plain text."""
    if output.get("output_type") == "error":
        output["traceback"] = [strip_ansi(str(line)) for line in output.get("traceback", [])]
    return output


def tell_stopped(nb: Any, cell: Any, reason: str) -> None:
    """Unless the relay said it already (relay/iopub.py: in the cell that was running, to
    which nbclient then had a reply and went on to the next), add to the cell that was
    running the error output that says why the kernel stopped."""
    from nbformat.v4 import new_output

    if any(o.get("ename") == ENAME for c in nb.cells for o in c.get("outputs", [])):
        return
    text = stopped_text(reason)
    cell.outputs.append(new_output("error", ename=ENAME, evalue=text, traceback=[text]))


class StreamingClient(NotebookClient):
    """nbclient's client, printing each output as it arrives, keeping a handle on the
    kernel's provisioner (for why it died) and turning Ctrl-C into a clean stop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.provisioner: Any = None
        self.interrupted = False
        self.errors = 0  # cells whose execute_reply was an error
        self.running_cell: Any = None
        self._printed_cell: int | None = None
        self.on_cell_execute = self._cell_starts
        self.on_cell_error = self._cell_failed

    def _cell_starts(self, cell: Any, cell_index: int) -> None:
        self.running_cell = cell

    def _cell_failed(self, cell: Any, cell_index: int, execute_reply: Any) -> None:
        self.errors += 1

    def output(
        self, outs: list[Any], msg: dict[str, Any], display_id: str | None, cell_index: int
    ) -> Any:
        out = super().output(outs, msg, display_id, cell_index)
        if out is not None:
            plain(out)
            text = text_of(out)
            if text.strip():
                if self._printed_cell != cell_index:
                    self._printed_cell = cell_index
                    print(f"--- cell {cell_index} ---", flush=True)
                # Escaped: the sandbox's output must not drive the terminal (console.py).
                sys.stdout.write(printable(text))
                sys.stdout.flush()
        return out

    async def async_start_new_kernel(self, **kwargs: Any) -> None:
        await super().async_start_new_kernel(**kwargs)
        assert self.km is not None
        self.provisioner = getattr(self.km, "provisioner", None)

    @asynccontextmanager
    async def async_setup_kernel(self, **kwargs: Any) -> AsyncIterator[None]:
        async with super().async_setup_kernel(**kwargs):
            # Instead of nbclient's handler (a shutdown racing the running cell): stop
            # the run; leaving the block shuts the kernel down.
            task = asyncio.current_task()
            loop = asyncio.get_running_loop()

            def interrupted() -> None:
                if not self.interrupted and task is not None:
                    self.interrupted = True
                    # Its work is abandoned: end the sandbox at once rather than
                    # interrupt a busy kernel and ask it to shut down.
                    self.shutdown_kernel = "immediate"
                    task.cancel()  # nbclient reports it as DeadKernelError

            try:
                loop.add_signal_handler(signal.SIGINT, interrupted)
            except (RuntimeError, NotImplementedError):
                pass  # not the main thread: Ctrl-C cannot reach us anyway
            yield

    @property
    def end_reason(self) -> str | None:
        return getattr(self.provisioner, "end_reason", None)


def run_notebook(
    path: str,
    *,
    kernel_name: str,
    output: str | None,
    timeout: float,
    allow_errors: bool = False,
) -> int:
    import nbformat
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    try:
        nb = nbformat.read(path, as_version=4)
    except OSError as exc:
        raise SandboxError(f"cannot read notebook {path}: {exc.strerror}") from None
    except Exception as exc:
        raise SandboxError(f"{path} is not a readable notebook: {exc}") from None
    # The kernel starts "in" the notebook's folder, as in Jupyter: copy_in paths and
    # exported files are relative to it.
    folder = os.path.dirname(os.path.abspath(path))
    client = StreamingClient(
        nb,
        kernel_name=kernel_name,
        timeout=int(timeout),
        allow_errors=allow_errors,
        resources={"metadata": {"path": folder}},
    )
    started = time.monotonic()
    try:
        asyncio.run(client.async_execute())
    except asyncio.CancelledError:
        if not client.interrupted:
            raise
    except CellExecutionError:
        pass  # the traceback is printed already
    except DeadKernelError as exc:
        reason = client.end_reason
        if client.interrupted:
            pass
        elif reason is None:
            raise SandboxError(f"could not run {path} in kernel {kernel_name!r}: {exc}") from None
        elif client.running_cell is not None:  # the graded notebook says why it stops there
            tell_stopped(nb, client.running_cell, reason)
    except Exception as exc:
        raise SandboxError(f"could not run {path} in kernel {kernel_name!r}: {exc}") from exc
    finally:
        if output:
            nbformat.write(nb, output)
    took = f"in {time.monotonic() - started:.1f} s"
    if client.interrupted:
        print(f"sandbox-kernel: interrupted; the kernel was shut down {took}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if client.end_reason is not None:
        print(
            f"sandbox-kernel: {stopped_text(client.end_reason)}; {path} did not run to the end",
            file=sys.stderr,
        )
        return EXIT_LIMIT
    if client.errors:
        print(f"sandbox-kernel: {client.errors} cell(s) of {path} failed {took}", file=sys.stderr)
        return EXIT_CELL_FAILED
    print(f"ran {path} in kernel {kernel_name!r} {took}")
    return EXIT_OK
