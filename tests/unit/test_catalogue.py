"""The attack catalogue itself (sandbox_kernel/security): one well-formed program per
attack, its preludes and children all used, marks resolved by ``assemble``, parameters
filled by ``render``. Running the attacks: tests/security/test_attacks.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from sandbox_kernel.security import ATTACKS, PROTECTS, Attack, attacks, render


def _needs_read(code: str) -> set[str]:
    """The names a program reads as ``NEEDS["name"]``; any other use of NEEDS fails."""
    names: set[str] = set()
    other_uses = 0
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name) and node.id == "NEEDS" and isinstance(node.ctx, ast.Load):
            other_uses += 1
        if isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "NEEDS":
            key = node.slice.value if isinstance(node.slice, ast.Constant) else None
            assert isinstance(key, str), f"NEEDS read with a key that is not a name: {node}"
            names.add(key)
            other_uses -= 1
    assert other_uses == 0, "NEEDS is used other than as NEEDS['name']"
    return names


_MARKS = re.compile(r"#\s*(inlined|embedded|provided|filled by render\(\))\s*$", re.MULTILINE)


def test_catalogue_is_well_formed() -> None:
    ids = [a.id for a in ATTACKS]
    assert len(ids) == len(set(ids)), "duplicate attack ids"
    assert {a.protects for a in ATTACKS} == set(PROTECTS)
    for attack in ATTACKS:
        assert _needs_read(attack.code) == set(attack.needs), f"{attack.id}: NEEDS read != needs"
        rendered = render(attack, **{n: "x" for n in attack.needs})
        tree = ast.parse(compile(rendered, attack.id, "exec", ast.PyCF_ONLY_AST))
        assert "_report(" in rendered
        # Standalone: nothing left to resolve, nothing of sandbox_kernel imported.
        assert not _MARKS.search(rendered), (
            f"{attack.id}: a mark is left: {_MARKS.search(rendered)}"
        )
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{attack.id}: a relative import is left"
                assert not (node.module or "").startswith("sandbox_kernel"), attack.id
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("sandbox_kernel") for a in node.names), attack.id


def _marked(path: str) -> list[tuple[str, ast.stmt]]:
    """(mark, statement) for each marked top-level statement of programs/<path>."""
    text = (attacks.PROGRAMS / path).read_text()
    lines = text.splitlines()
    found = []
    for node in ast.parse(text).body:
        mark = _MARKS.search(lines[node.lineno - 1])
        if mark:
            found.append((mark.group(1), node))
    assert len(found) == len(_MARKS.findall(text)), f"{path}: a mark off a top-level statement"
    return found


def _top_level_names(path: str) -> set[str]:
    names: set[str] = set()
    for node in ast.parse((attacks.PROGRAMS / path).read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def test_every_program_file_is_in_the_table_and_every_attack_has_one() -> None:
    """One file per attack, named by its id; every prelude and child program is used by
    some attack, and the names a marked import takes are defined where it points."""
    folder = attacks.PROGRAMS
    top = {p.name for p in folder.iterdir() if p.name.endswith(".py")}
    children = {
        "children/" + p.name for p in (folder / "children").iterdir() if p.name.endswith(".py")
    }
    assert {p for p in top if not p.startswith("_")} == {
        attacks.program_file(a.id) for a in ATTACKS
    }
    used: set[str] = set()
    todo = [attacks.program_file(a.id) for a in ATTACKS]
    while todo:
        path = todo.pop()
        for mark, node in _marked(path):
            if mark not in ("inlined", "embedded", "provided") or not isinstance(
                node, ast.ImportFrom
            ):
                continue
            assert node.level == 1 and node.module, (path, ast.unparse(node))
            base = "/".join(filter(None, [path.rpartition("/")[0], *node.module.split(".")]))
            if mark == "embedded":
                targets = [f"{base}/{a.name}.py" for a in node.names]
            else:
                targets = [base + ".py"]
                missing = {a.name for a in node.names} - _top_level_names(targets[0])
                assert not missing, f"{path} takes {missing} from {targets[0]}, which lacks them"
            for target in targets:
                if target not in used:
                    used.add(target)
                    todo.append(target)
    assert used == {p for p in top if p.startswith("_")} | children, "unused or missing programs"
    for child in children:  # run as programs of their own: each must compile alone
        compile(attacks.assemble(child, top=False), child, "exec")


def test_assemble_resolves_marks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "children").mkdir()
    (tmp_path / "_a.py").write_text("import os as _os\n\n\ndef _f():\n    return _os.sep\n")
    (tmp_path / "_b.py").write_text("from ._a import _f  # inlined\n\n_g = _f\n")
    (tmp_path / "children" / "c.py").write_text('x = 0  # provided\nprint(x, "\\\\")\n')
    (tmp_path / "good.py").write_text(
        "from ._a import _f  # inlined\n"
        "from ._b import _g  # inlined\n"
        "from .children import c as CHILD  # embedded\n\n"
        f"{attacks.NEEDS_LINE}\n"
        'print(_g(), CHILD, NEEDS["n"])\n'
    )
    monkeypatch.setattr(attacks, "PROGRAMS", tmp_path)
    code = attacks.assemble("good.py")
    assert code.count("def _f():") == 1, "a prelude is inlined once"
    assert "# inlined" not in code and "# embedded" not in code and "x = 0" not in code
    namespace: dict[str, Any] = {}
    exec(code.replace(attacks.NEEDS_LINE, "NEEDS = {'n': 1}"), namespace)
    assert namespace["CHILD"] == 'print(x, "\\\\")\n'
    bad = {
        "x = 1  # inlined\n": "marks a 'from .module import",
        "from .children import c  # embedded\n": "one program 'as NAME'",
        "def f():\n    from ._a import _f  # inlined\n": "first line of a top-level statement",
        "if True:\n    NEEDS = {}  # filled by render()\n": "first line of a top-level statement",
        "NEEDS = {}   # filled by render()\n": "exactly",
        "from .children import bad as B  # embedded\n": "only an attack's program",
    }
    (tmp_path / "children" / "bad.py").write_text(attacks.NEEDS_LINE + "\n")
    for text, why in bad.items():
        (tmp_path / "bad.py").write_text(text)
        with pytest.raises(ValueError, match=re.escape(why)):
            attacks.assemble("bad.py")


def test_render_fills_only_the_needs_line() -> None:
    code = f"x = {{'k': 1}}\n{attacks.NEEDS_LINE}\ny = {{'k': NEEDS['c']}}\nprint(f'{{x}}')\n"
    attack = Attack("t", "network", "t", code, ("a", "c"))
    rendered = render(attack, a="it's", c=[1, {"n": None}])
    assert rendered == (
        "x = {'k': 1}\nNEEDS = {'a': \"it's\", 'c': [1, {'n': None}]}\n"
        "y = {'k': NEEDS['c']}\nprint(f'{x}')\n"
    )
    namespace: dict[str, Any] = {}
    exec(rendered.replace("print(", "str("), namespace)
    assert namespace["NEEDS"] == {"a": "it's", "c": [1, {"n": None}]}
    with pytest.raises(TypeError, match="missing"):
        render(attack, a=1)
    with pytest.raises(TypeError, match="unexpected"):
        render(attack, a=1, c=2, d=3)
    with pytest.raises(TypeError, match="literal"):
        render(attack, a=object(), c=1)
    with pytest.raises(TypeError, match="literal"):
        render(attack, a=float("nan"), c=1)
    with pytest.raises(ValueError, match="expected one"):
        render(Attack("t", "network", "t", "print(1)\n", ("a",)), a=1)
    assert render(Attack("t", "network", "t", code)) == code, "no needs: the code as it is"
