"""The docs/nbgrader.md recipe, for real: `nbgrader autograde` runs a student's submission
in the sandboxed kernel. The submission names the plain `python3` kernel and tries to read
a host file and write one; grades are still computed, nothing of the host is touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import docker
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tests.helpers import EXAMPLES
from tests.integration.servers import assert_none_left

RECIPE = EXAMPLES / "nbgrader_config.py"


def nbgrader_cell(source: str, grade_id: str, *, solution: bool, points: int = 0) -> object:
    meta = {
        "grade": points > 0, "solution": solution, "locked": not solution, "task": False,
        "grade_id": grade_id, "schema_version": 3,
    }  # fmt: skip
    if points:
        meta["points"] = points
    return new_code_cell(source, metadata={"nbgrader": meta})


def nbgrader(course: Path, env: dict[str, str], client: docker.DockerClient, *args: str) -> str:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbgrader", *args],
        cwd=course, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert proc.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{out[-6000:]}"
    # Its kernels and warm pool went with it.
    assert_none_left(client, proc.pid, f"nbgrader {args[0]}")
    return out


def test_autograde_in_the_sandbox(
    tmp_path: Path, kernel_dirs: Path, docker_client: docker.DockerClient
) -> None:
    course = tmp_path / "course"
    source = course / "source" / "ps1"
    source.mkdir(parents=True)
    # The recipe's config, as a grader would copy it into the course folder.
    (course / "nbgrader_config.py").write_text(
        RECIPE.read_text() + f"\nc.CourseDirectory.root = {str(course)!r}\n"
    )
    env = {
        **os.environ,
        "JUPYTER_PATH": str(kernel_dirs.parent),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),  # no user-level config
        # nbgrader runs `alembic` from PATH: the venv's bin, as when the venv is activated.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }

    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "sandbox-python", "display_name": "Python 3 (sandboxed)", "language": "python",
    }  # fmt: skip
    nb.cells = [
        new_markdown_cell("Write `add(a, b)`."),
        nbgrader_cell(
            "def add(a, b):\n    ### BEGIN SOLUTION\n    return a + b\n    ### END SOLUTION",
            "answer",
            solution=True,
        ),
        nbgrader_cell(
            "assert add(2, 3) == 5\nassert add(-1, 1) == 0", "test_add", solution=False, points=2
        ),
    ]
    nbformat.write(nb, source / "problem.ipynb")
    nbgrader(course, env, docker_client, "generate_assignment", "ps1", "--force")
    released = course / "release" / "ps1" / "problem.ipynb"
    assert released.exists()

    # The grader's machine holds something the student must not get, and a place the
    # student must not write to.
    secret = tmp_path / "grader-secret.txt"
    secret.write_text("answer key: 42")
    planted = tmp_path / "planted-by-student.txt"

    student = nbformat.read(released, as_version=4)
    student.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}  # fmt: skip
    student.cells[1].source = (
        "import os, platform\n"
        "def add(a, b):\n    return a + b\n"
        f"try:\n    print('LEAKED', open({str(secret)!r}).read())\n"
        "except OSError as e:\n    print('no host file:', e.strerror)\n"
        f"try:\n    open({str(planted)!r}, 'w').write('pwned'); print('WROTE host file')\n"
        "except OSError as e:\n    print('no host write:', e.strerror)\n"
        "import sandboxed\n"
        "open('loot.txt', 'w').write('x')\n"
        "for name, call in (('export', lambda: sandboxed.export('loot.txt')), ('expose', lambda: sandboxed.expose(8050))):\n"
        "    try:\n        print('CHANNEL OPEN', name, call())\n"
        "    except sandboxed.SandboxRequestError as e:\n        print('no', name + ':', e)\n"
        "print('graded on', platform.release(), 'as uid', os.getuid())"
    )
    submitted = course / "submitted" / "alice" / "ps1"
    submitted.mkdir(parents=True)
    nbformat.write(student, submitted / "problem.ipynb")

    log = nbgrader(course, env, docker_client, "autograde", "ps1", "--force")
    graded = nbformat.read(course / "autograded" / "alice" / "ps1" / "problem.ipynb", as_version=4)
    text = "".join(o.get("text", "") for o in graded.cells[1].outputs)
    assert (
        graded.metadata["kernelspec"]["name"] == "sandbox-python"
    )  # the student's was overwritten
    assert "no host file: No such file or directory" in text and "LEAKED" not in text, text
    assert "no host write: No such file or directory" in text and "WROTE" not in text, text
    release, uid = text.split("graded on ")[1].split(" as uid ")
    assert release != os.uname().release and uid.strip() == "1000", (text, log)
    assert not planted.exists()
    # The recipe closes the sandbox's export and port channels while grading.
    assert "no export:" in text and "no expose:" in text and "CHANNEL OPEN" not in text, text
    assert not list((course / "autograded").rglob("*loot*"))

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        submission = gb.find_submission("ps1", "alice")
        assert (submission.score, submission.max_score) == (2.0, 2.0)
