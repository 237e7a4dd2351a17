"""Find, and rewrite, imports that take a name through a module that does not define it.

``from spr_plugin.x import name`` where ``x`` only imports ``name`` from ``y`` works until ``x`` stops
needing it, and hides where ``name`` lives: a reader (and a move of ``y``) has to chase it. A module
*defines* a name when it assigns it, defines it (``def`` / ``class``) at module level, or lists it in its
``__all__`` (a deliberate re-export, e.g. the public API in ``spr_plugin/__init__.py``). A submodule of a
package is not a re-export either (``from spr_plugin.core import records``).

    python scripts/fix_reexport_imports.py          # rewrite them to the defining module, then ruff
    python scripts/fix_reexport_imports.py --check  # list them, exit 1 if any

Modules are the files of ``spr_plugin/`` and ``data_builders/`` (packages), and of ``bench/`` and ``tests/``
(scripts imported by their file name, as ``tests/helpers.py`` and ``bench/`` do with ``sys.path``).
The rewrite is idempotent: a second run finds nothing. Rewritten files are passed to ``ruff check --fix
--select I`` and ``ruff format`` so their imports stay sorted and merged.
"""

from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("spr_plugin", "data_builders")
SCRIPT_DIRS = ("bench", "tests")


@dataclass(frozen=True)
class Reexport:
    """One imported name of ``file`` (line ``line``) that ``module`` only re-exports; ``source`` defines it."""

    file: Path
    line: int
    module: str
    name: str
    source: str | None  # None: the chain ends in a plain ``import`` or outside the project

    def __str__(self) -> str:
        where = f"defined in {self.source}" if self.source else "not defined in the project"
        return f"{self.file}:{self.line}: {self.name} from {self.module} ({where})"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every importable module name of the project and its file."""
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = f
    for d in SCRIPT_DIRS:
        for f in sorted((root / d).rglob("*.py")):
            parts = list(f.relative_to(root / d).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if parts:
                mods.setdefault(".".join(parts), f)
    return mods


@dataclass(frozen=True)
class _Module:
    defined: frozenset[str]
    #: name -> (module, original name) for ``from M import original as name`` at module level
    imported: dict[str, tuple[str, str]]


def _targets(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def _module_level(body: list[ast.stmt]):
    """Statements run at import time (module level, inside ``if`` / ``try`` / ``with`` blocks too)."""
    for node in body:
        yield node
        for attr in ("body", "orelse", "finalbody", "handlers"):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = getattr(node, attr, None)
                if isinstance(inner, list):
                    yield from _module_level(inner)


@cache
def _parse(path: Path) -> _Module:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defined: set[str] = set()
    imported: dict[str, tuple[str, str]] = {}
    for node in _module_level(tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.With)):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if isinstance(node, ast.With):
                targets = [i.optional_vars for i in node.items if i.optional_vars is not None]
            for t in targets:
                if t is not None:
                    defined |= _targets(t)
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                if isinstance(node.value, (ast.List, ast.Tuple)):
                    defined |= {e.value for e in node.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                imported.setdefault(a.asname or a.name, (node.module, a.name))
    return _Module(frozenset(defined), imported)


def defining_module(module: str, name: str, mods: dict[str, Path]) -> tuple[bool, str | None]:
    """Whether ``module`` defines ``name`` and, if not, which project module does (following re-exports)."""
    seen = set()
    current, original = module, name
    while current in mods and (current, original) not in seen:
        seen.add((current, original))
        info = _parse(mods[current])
        if original in info.defined or f"{current}.{original}" in mods:
            return current == module and original == name, current
        if original not in info.imported:
            return current == module, None
        current, original = info.imported[original]
    return False, None


def find_reexports(root: Path = ROOT) -> list[Reexport]:
    mods = module_files(root)
    found = []
    for path in sorted(set(mods.values())):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in mods):
                continue
            for a in node.names:
                if a.name == "*":
                    continue
                ok, source = defining_module(node.module, a.name, mods)
                if not ok:
                    found.append(Reexport(path, node.lineno, node.module, a.name, source))
    return found


def _spelled(a: ast.alias) -> str:
    return a.name if a.asname is None else f"{a.name} as {a.asname}"


def _rewrite(path: Path, bad: list[Reexport]) -> bool:
    """Move each offending name of ``path`` to an import from its defining module.

    The name joins an existing ``from DEFINER import ...`` of the same block if there is one (so the import
    block stays as ruff's isort would merge it), else a new statement right after the original. A trailing
    comment (a ``noqa`` for E402 in the bench scripts) is kept on every statement written.
    """
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    tree = ast.parse(text)
    wrong = {(r.line, r.module, r.name): r.source for r in bad if r.source}
    names: dict[ast.ImportFrom, list[str]] = {}  # the statements rewritten, with their new names
    added: dict[ast.ImportFrom, list[tuple[str, str]]] = {}  # (module, name) to write after a statement
    for block in ast.walk(tree):
        body = getattr(block, "body", None)
        if not isinstance(body, list):
            continue
        imports = [n for n in body if isinstance(n, ast.ImportFrom) and n.level == 0]
        by_module = {n.module: n for n in imports}
        new_after: dict[str, ast.ImportFrom] = {}
        for node in imports:
            for a in node.names:
                source = wrong.get((node.lineno, node.module, a.name))
                if not source:
                    continue
                names.setdefault(node, [_spelled(x) for x in node.names]).remove(_spelled(a))
                home = by_module.get(source)
                if home is not None:
                    names.setdefault(home, [_spelled(x) for x in home.names]).append(_spelled(a))
                else:  # one new statement per defining module in this block, after the first import moved to it
                    after = new_after.setdefault(source, node)
                    added.setdefault(after, []).append((source, _spelled(a)))
    edits = []
    for node in set(names) | set(added):
        indent = lines[node.lineno - 1][: node.col_offset]
        tail = lines[node.end_lineno - 1][node.end_col_offset :].rstrip("\n")
        comment = "  " + tail[tail.index("#") :] if "#" in tail else ""
        kept = names.get(node, [_spelled(x) for x in node.names])
        statements = [(node.module, kept)] if kept else []
        for module, name in added.get(node, []):
            group = next((g for m, g in statements if m == module), None)
            if group is None:
                statements.append((module, [name]))
            else:
                group.append(name)
        # ruff's isort keeps ``name as alias`` on a line of its own (no combine-as-imports): write it so
        new = "".join(
            f"{indent}from {m} import {', '.join(group)}{comment}\n"
            for m, ns in statements
            for group in [[n for n in ns if " as " not in n], *[[n] for n in ns if " as " in n]]
            if group
        )
        edits.append((node.lineno, node.end_lineno, new))
    for start, end, new in sorted(edits, reverse=True):
        lines[start - 1 : end] = [new]
    new_text = "".join(lines)
    if new_text != text:
        path.write_text(new_text, encoding="utf-8")
        return True
    return False


def _ruff(files: list[Path], root: Path) -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    names = [str(f) for f in files]
    subprocess.run([ruff, "check", "--fix", "--select", "I", "--quiet", *names], cwd=root, check=False)
    subprocess.run([ruff, "format", "--quiet", *names], cwd=root, check=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="list the imports, rewrite nothing; exit 1 if any")
    ap.add_argument("--root", type=Path, default=ROOT, help="the project folder (default: this script's repository)")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    found = find_reexports(root)
    for r in found:
        print(r)
    if args.check:
        return 1 if found else 0
    by_file: dict[Path, list[Reexport]] = {}
    for r in found:
        by_file.setdefault(r.file, []).append(r)
    changed = [f for f, rs in by_file.items() if _rewrite(f, rs)]
    if changed:
        _ruff(changed, root)
    _parse.cache_clear()
    left = find_reexports(root)
    print(f"rewrote {len(changed)} files; {len(left)} imports left" + ("" if not left else " (fix by hand):"))
    for r in left:
        print(f"  {r}")
    return 1 if left else 0


if __name__ == "__main__":
    raise SystemExit(main())
