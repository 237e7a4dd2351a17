"""Records and statistics as JSON dicts, written from their dataclass fields.

A hand-written ``to_dict`` per class repeats every field name and drifts from the class (a field added and
not written is lost from every file). :func:`field_dict` walks ``dataclasses.fields`` in declaration order, so
the JSON keys follow the class; what differs from the plain rule is said per field: a key written under another
name (``keys``), a field left out while it holds its default (``omit_default``: files stay as small as before
the field existed, and older readers see the same dict), a field not written at all (``skip``) and a field
with its own form (``dump``). Values become JSON the same way everywhere (:func:`plain`).

Reading stays per class (``from_dict`` in :mod:`spr_plugin.core.records`): it checks each field of a file
that may come from elsewhere, which a generic reader could not say as precisely.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any


def plain(value: Any) -> Any:
    """``value`` as JSON data: a record by its ``to_dict``, a box-like value by its ``as_list``, a tuple as a
    list, a mapping (a ``Counter`` too) as a dict; anything else (numbers, strings, ``None``) as it is, for the
    JSON writer (:mod:`spr_plugin.core.jsonl`) to accept or refuse."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "as_list"):
        return value.as_list()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name!r} has no default to omit")


def field_dict(
    obj: Any,
    *,
    keys: Mapping[str, str] | None = None,
    omit_default: Collection[str] = (),
    skip: Collection[str] = (),
    dump: Mapping[str, Callable[[Any], Any]] | None = None,
) -> dict[str, Any]:
    """The fields of the dataclass ``obj`` as a JSON dict, in declaration order (see the module docstring)."""
    keys, dump = keys or {}, dump or {}
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if f.name in omit_default and value == _default(f):
            continue
        out[keys.get(f.name, f.name)] = dump[f.name](value) if f.name in dump else plain(value)
    return out
