"""Config files for the stage commands, the way LLaMA-Factory reads its training YAMLs.

    spr build configs/build_coco_qwen2vl.yaml name=my_run k=5 --overwrite

A config file is a flat YAML mapping whose keys are the command's settings, spelled as the flags' ``dest``
names (``--images`` is ``image_root``, ``--candidates`` of ``spr build`` is ``candidates_file``, the frame is
``image_max_pixels`` / ``image_min_pixels``; ``spr build --help`` shows the flags, the key is the flag's name
with ``_`` for ``-``). Precedence, highest first: a flag on the command line, a ``key=value`` after the file,
the file, the flag's default. A key the command does not have is refused in one line naming it (as
LLaMA-Factory refuses an unknown argument), before anything runs.

Why flat and why the flags' names: a config file is the command line written down, so every key is
documented by ``--help``, a file can be diffed against another one key by key, and a value from a file goes
through exactly the flag's parsing and checks (its ``type``, ``choices`` and the config's ``__post_init__``):
there is no second reader that could disagree with the command line.

The file is read with :func:`spr_plugin.core.yaml_safe.load_yaml` (size and alias-expansion budget).
"""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Sequence
from typing import Any

import yaml

from spr_plugin.core.errors import SPRError
from spr_plugin.core.yaml_safe import load_yaml, short

#: The commands that take a config file (their subcommand path in ``argv``).
CONFIG_COMMANDS = (("regions",), ("generate",), ("pair",), ("export",), ("build",), ("eval", "rec"), ("eval", "region"))
CONFIG_SUFFIXES = (".yaml", ".yml")
#: Parser ``dest``s that are not settings (argparse's own, the sub-command selectors).
_NOT_SETTINGS = {"help", "func", "command", "eval_command", "verbose"}


def _is_config(token: str) -> bool:
    return not token.startswith("-") and token.lower().endswith(CONFIG_SUFFIXES)


def _is_override(token: str) -> bool:
    key, eq, _ = token.partition("=")
    return bool(eq) and not token.startswith("-") and key.isidentifier()


def _subparser(parser: argparse.ArgumentParser, path: Sequence[str]) -> argparse.ArgumentParser:
    for name in path:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[name]
    return parser


def settings_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The command's settings by key (the flag's ``dest``): every optional flag but ``--help``."""
    return {
        a.dest: a
        for a in parser._actions
        if a.option_strings and a.dest not in _NOT_SETTINGS and not isinstance(a, argparse._HelpAction)
    }


def _scalar(value: Any) -> str:
    if value is None:
        return "none"  # the pixel bounds' spelling of "no pre-resize"; other flags refuse it in their own words
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _tokens(key: str, value: Any, action: argparse.Action, where: str) -> list[str]:
    """The command-line tokens that say ``key: value`` (so the flag's own parsing and checks apply)."""
    flag = max(action.option_strings, key=len)
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise SPRError(f"{where}: {key} must be true or false, got {short(repr(value))}")
        return [flag] if value != action.default else []
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, dict):
        raise SPRError(f"{where}: {key} must be a value or a list, got a mapping")
    if action.nargs in ("+", "*"):
        return [flag, *map(_scalar, values)]
    if isinstance(action, argparse._AppendAction):
        return [tok for v in values for tok in (flag, _scalar(v))]
    if isinstance(value, (list, tuple)):  # comma-separated flags (--variants, --thresholds)
        return [flag, ",".join(map(_scalar, values))]
    if isinstance(value, bool) and action.choices is not None and {"on", "off"} <= set(action.choices):
        return [flag, "on" if value else "off"]  # YAML 1.1 reads an unquoted on/off as a boolean
    return [flag, _scalar(value)]


def _given_flags(tokens: Sequence[str], actions: dict[str, argparse.Action]) -> set[str]:
    """The settings the command line itself gives (they win over the file and the ``key=value`` overrides)."""
    by_flag = {flag: dest for dest, a in actions.items() for flag in a.option_strings}
    given = set()
    for tok in tokens:
        if tok.startswith("-"):
            head = tok.split("=", 1)[0]
            matches = [d for f, d in by_flag.items() if f == head] or [d for f, d in by_flag.items() if f.startswith(head)]
            if len(set(matches)) == 1:  # argparse's unambiguous abbreviations too
                given.add(matches[0])
    return given


def _unknown_key(key: object, actions: dict[str, argparse.Action], command: str, where: str) -> SPRError:
    """One line naming the key, with the key the user probably meant (a flag spelled as its dest, or a near name)."""
    text = short(repr(key), 80)
    hint = ""
    if isinstance(key, str):
        flag = "--" + key.replace("_", "-")
        meant = [dest for dest, a in actions.items() if flag in a.option_strings] or difflib.get_close_matches(key, actions, 1)
        hint = f"; did you mean {meant[0]!r}?" if meant else ""
    return SPRError(
        f"{where}: unknown key {text}: not a setting of spr {command}{hint} (keys: the flags' dest names, see --help)"
    )


def load_config(path: str | os.PathLike, actions: dict[str, argparse.Action], command: str) -> dict[str, Any]:
    """The settings of a config file, keys checked against the command's settings."""
    doc = load_yaml(path, what="config file")
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise SPRError(f"config file {path}: expected a mapping of settings (key: value), got {type(doc).__name__}")
    for key in doc:
        if not isinstance(key, str) or key not in actions:
            raise _unknown_key(key, actions, command, f"config file {path}")
    return dict(doc)


def parse_override(token: str, actions: dict[str, argparse.Action], command: str) -> tuple[str, Any]:
    """``key=value`` as LLaMA-Factory's overrides. The value is the flag's text (its ``type`` parses it), except
    for a switch (``overwrite=true``) and a list (``candidates=[a.jsonl,b.jsonl]``), read as YAML."""
    key, _, text = token.partition("=")
    if key not in actions:
        raise _unknown_key(key, actions, command, short(token, 80))
    action = actions[key]
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or text.lstrip().startswith("["):
        try:
            return key, yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SPRError(f"{short(token)}: not a value ({short(str(exc), 80)})") from None
    return key, text


def add_config_epilogs(parser: argparse.ArgumentParser) -> None:
    """Say in each config command's ``--help`` that it takes a config file, and how its keys are spelled."""
    for path in CONFIG_COMMANDS:
        command = " ".join(path)
        _subparser(parser, path).epilog = (
            f"Config file: spr {command} CONFIG.yaml [key=value ...] [flags]. Keys are the flags' names with _ for - "
            "(their dest: --images of regions/build is image_root); flags win over key=value, which wins over the file. "
            "Examples: spr recipes (configs/)."
        )


def expand_config_argv(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``argv`` with a config file and its ``key=value`` overrides turned into the flags they stand for.

    ``spr [-v] COMMAND [SUBCOMMAND] FILE.yaml [key=value ...] [--flag ...]``: anything else is returned as is.
    """
    argv = list(argv)
    start = 0
    while start < len(argv) and argv[start].startswith("-"):
        start += 1  # global options (-v)
    for path in CONFIG_COMMANDS:
        end = start + len(path)
        if tuple(argv[start:end]) == path and end < len(argv) and _is_config(argv[end]):
            break
    else:
        return argv
    command = " ".join(path)
    sub = _subparser(parser, path)
    actions = settings_actions(sub)
    values = load_config(argv[end], actions, command)
    rest = argv[end + 1 :]
    while rest and _is_override(rest[0]):
        key, value = parse_override(rest.pop(0), actions, command)
        values[key] = value
    given = _given_flags(rest, actions)
    where = f"config file {argv[end]}"
    tokens = [tok for key, value in values.items() if key not in given for tok in _tokens(key, value, actions[key], where)]
    return [*argv[:end], *tokens, *rest]
