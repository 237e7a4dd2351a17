"""YAML files a user hands to spr (training recipes), loaded within a budget.

``yaml.safe_load`` builds no arbitrary objects, but it expands nothing lazily either: an *alias bomb* (an
anchor referenced ten times, each of those ten times, ... nine levels deep) is a 1 kB file that stands for
10^9 nodes. PyYAML shares the aliased objects, so loading it is quick, but whatever walks or prints the
result afterwards (a check that quotes a value, ``repr`` in an error message) runs for minutes and prints
megabytes. Here the composed node graph is measured *as if expanded* (each node once, memoised) before any
Python object is built, and a document over :data:`MAX_NODES` is refused in one line. Ordinary anchors
(a shared block of settings) stay well inside the budget.

Errors quote at most :data:`MAX_MESSAGE` characters of PyYAML's message: one short line, whatever the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from spr_plugin.core.errors import SPRError

#: A training YAML is a few kB; anything beyond this is not a recipe (and parsing stays well under a second).
MAX_BYTES = 256_000
#: Nodes of the document with every alias expanded (a recipe has a few hundred).
MAX_NODES = 100_000
#: Characters of a parser message quoted in an error.
MAX_MESSAGE = 160


def short(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` as one line of at most ``limit`` characters (whitespace runs collapsed, the rest cut)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def expanded_size(root: yaml.Node, budget: int) -> int:
    """Nodes of ``root`` with every alias expanded, counted up to ``budget + 1`` (then it stops).

    Iterative (a deeply nested file cannot exhaust the stack) and memoised on node identity, so a bomb costs
    as many steps as it has distinct nodes, not the 10^9 it stands for.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        kids = _children(node)
        if not children_done:
            if key in on_path:  # a recursive alias (PyYAML cannot construct it either): infinite expansion
                return budget + 1
            on_path.add(key)
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
            continue
        on_path.discard(key)
        total = 1 + sum(sizes.get(id(k), budget + 1) for k in kids)
        sizes[key] = min(total, budget + 1)
        if sizes[key] > budget and node is not root:
            return budget + 1
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


#: libyaml's safe loader where PyYAML was built with it (ten times faster on a long hostile line), else Python's.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: str | os.PathLike, what: str = "YAML file") -> Any:
    """The document of a user's YAML file, or :class:`SPRError` in one short line: not found, too large,
    not UTF-8, not YAML, more than one document, or over the expansion budget."""
    p = Path(path)
    if not p.is_file():
        raise SPRError(f"{what} not found: {p}")
    size = p.stat().st_size
    if size > MAX_BYTES:
        raise SPRError(f"{p}: {size:,} bytes is too large for a {what} (at most {MAX_BYTES:,})")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SPRError(f"{p} is not valid UTF-8 (byte {exc.start})") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if expanded_size(node, MAX_NODES) > MAX_NODES:
            raise SPRError(
                f"{p}: its aliases expand to more than {MAX_NODES:,} values (a YAML alias bomb?); refused before loading"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise SPRError(f"{p} is not valid YAML ({short(exc)})") from None
    except RecursionError:
        raise SPRError(f"{p}: nested too deeply for a {what}") from None
    finally:
        loader.dispose()
