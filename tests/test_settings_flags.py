"""Settings once (#19): every subcommand's flags are generated from config fields, and parsing a subcommand with
only its required arguments gives each setting its field's default (no second, hand-written default to drift)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from spr_plugin import settings
from spr_plugin.cli import build_parser
from spr_plugin.core.frame import DEFAULT_IMAGE_MAX_PIXELS, DEFAULT_IMAGE_MIN_PIXELS, NOT_GIVEN
from spr_plugin.evaluation import config as eval_config

SETTINGS_CLASSES = [
    settings.RegionConfig,
    settings.SamplingConfig,
    settings.GenerationConfig,
    settings.ServerConfig,
    settings.ScoringConfig,
    settings.PairingConfig,
    settings.BuildConfig,
    settings.WebUIConfig,
    settings.ShowConfig,
    settings.DemoConfig,
    eval_config.RecConfig,
    eval_config.RegionEvalConfig,
]
#: The settings the command line offers (a field with ``cli=False`` is no flag anywhere; ``out`` is every command's output).
SETTING_NAMES = {f.name for cls in SETTINGS_CLASSES for f in dataclasses.fields(cls) if f.metadata.get("cli")} - {"out"}

#: Flags whose default is deliberately not the field's: (command, dest) -> (default, why).
OVERRIDDEN = {
    **{
        (cmd, "box_format"): (None, "the input file's record decides; a different flag is refused")
        for cmd in ("pair", "build", "export", "show", "export-hf")
    },
    **{(cmd, "base_url"): (None, "only with --backend openai") for cmd in ("generate", "build")},
    **{(cmd, "served_model"): (None, "only with --backend openai") for cmd in ("generate", "build")},
    **{(cmd, "api_key"): (None, "$SPR_API_KEY / $OPENAI_API_KEY when not given") for cmd in ("generate", "build")},
    **{(cmd, "dataset_dir"): (Path("data"), "LlamaBoard's ./data; the config has no default") for cmd in ("export", "build")},
    ("build", "work_dir"): (Path("spr_work"), "the config has no default"),
    ("show", "name"): (settings.BuildConfig.name, "the build's dataset name (ShowConfig.name is required)"),
}

#: Hand-written flags whose dest is also a settings field's name, each a different thing than that field.
NOT_THE_FIELD = {
    ("pair", "annotations"): "optional here: only the category vocabulary, not the regions' source",
    ("export-grpo", "max_regions"): "the first N regions of a regions file, not sampling's cap",
    ("register", "dataset_dir"): "a plain folder to register into",
    ("register", "name"): "a dataset entry to write",
    ("register", "overwrite"): "replace that entry",
    ("check-recipe", "dataset_dir"): "overrides the recipe's dataset_dir",
    ("export-hf", "dataset_dir"): "the dataset folder to read",
    ("export-hf", "name"): "the dataset to read",
    ("eval rec", "recipe"): "the frame to check against",
    ("eval region", "recipe"): "the frame to check against",
    ("eval rec", "dataset_dir"): "with --name: the dataset whose frame must match",
    ("eval region", "dataset_dir"): "with --name: the dataset whose frame must match",
    ("eval rec", "name"): "with --dataset-dir",
    ("eval region", "name"): "with --dataset-dir",
    ("eval rec", "annotations"): "REC data, not detection annotations",
    ("eval region", "annotations"): "detection json to sample evaluation regions from",
    ("eval rec", "fresh"): "the results file, not a work dir",
    ("eval region", "fresh"): "the results file, not a work dir",
    ("generate", "fresh"): "the candidates file, not a work dir",
}
#: Dests that are never settings fields but argparse's or a file's (inputs, outputs, image folders).
PIXELS = {"image_max_pixels": DEFAULT_IMAGE_MAX_PIXELS, "image_min_pixels": DEFAULT_IMAGE_MIN_PIXELS}


def _commands(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}".strip()
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    yield from _commands(sub, full)
                else:
                    yield full, sub


def _required_argv(sub: argparse.ArgumentParser) -> list[str]:
    """The least a command parses with: a value for each required flag, positional and required group."""
    argv: list[str] = []
    for action in sub._actions:
        if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
            argv += ["x"] if action.nargs in (None, "+") else []
        elif action.required:
            argv += [action.option_strings[-1], "1" if action.type in (int, float) else "x"]
    for group in sub._mutually_exclusive_groups:
        if group.required:
            argv += [group._group_actions[0].option_strings[-1], "x"]
    return argv


COMMANDS = list(_commands(build_parser()))


def test_every_command_is_checked():
    names = {name for name, _ in COMMANDS}
    assert {"regions", "generate", "pair", "export", "build", "eval rec", "eval region", "show", "webui"} <= names


@pytest.mark.parametrize("command,sub", COMMANDS, ids=[name for name, _ in COMMANDS])
def test_defaults_are_the_fields_defaults(command, sub):
    a = sub.parse_args(_required_argv(sub))
    given = {id(g._group_actions[0]) for g in sub._mutually_exclusive_groups if g.required}
    for action in sub._actions:
        if not action.option_strings or action.dest in ("help", "func") or action.required or id(action) in given:
            continue
        value = getattr(a, action.dest)
        origin = getattr(action, "setting", None)
        if origin is not None:
            cls, name = origin
            field = cls.__dataclass_fields__[name]
            expected = field.default if field.default is not dataclasses.MISSING else None
            if field.default_factory is not dataclasses.MISSING:
                expected = field.default_factory()
            if (command, action.dest) in OVERRIDDEN:
                expected = OVERRIDDEN[(command, action.dest)][0]
                assert action.default_overridden, f"spr {command} {action.option_strings}: listed as overridden but is not"
            else:
                assert not action.default_overridden, f"spr {command} {action.option_strings}: default overridden, unlisted"
            assert value == expected, (
                f"spr {command} {action.option_strings[-1]}: {value!r} != {cls.__name__}.{name} {expected!r}"
            )
        elif action.dest in PIXELS:  # the frame flags: LLaMA-Factory's default, or 'not given' where a record decides
            assert value in (PIXELS[action.dest], NOT_GIVEN), (command, action.dest, value)
        else:
            assert action.dest not in SETTING_NAMES or (command, action.dest) in NOT_THE_FIELD, (
                f"spr {command} {action.option_strings[-1]} is written by hand but is the setting {action.dest!r}: "
                "generate it with settings.add_flags"
            )


def test_a_changed_field_default_changes_the_flag(monkeypatch):
    """The flags read the field at parser-build time: one place to change a default."""
    field = settings.ScoringConfig.__dataclass_fields__["lam"]
    monkeypatch.setattr(field, "default", 0.5)
    a = build_parser().parse_args(["pair", "--regions", "r", "--candidates", "c", "--out", "o"])
    assert a.lam == 0.5


def test_refine_functions_default_to_the_settings_policy():
    import inspect

    from spr_plugin.scoring.refine import refine, refine_candidate

    default = settings.PairingConfig().refine_policy
    assert default == "correct"
    for fn in (refine, refine_candidate):
        assert inspect.signature(fn).parameters["policy"].default == default, fn.__name__


def test_grounder_and_clip_defaults_are_the_scoring_settings():
    from spr_plugin.scoring.clip_semantic import ClipSemanticScorer
    from spr_plugin.scoring.grounder import GrounderConfig

    scoring = settings.ScoringConfig()
    g = GrounderConfig("m")
    assert (g.box_threshold, g.phrases) == (scoring.grounder_box_threshold, scoring.grounder_phrases)
    assert ClipSemanticScorer.__dataclass_fields__["long_text"].default == scoring.clip_long_text
