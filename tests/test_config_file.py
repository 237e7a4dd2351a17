"""Config files like LLaMA-Factory's (#19): ``spr build config.yaml key=value --flag``, keys = the flags' dest names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from candidates_factory import write_candidates
from data_builders.synthetic import render_scenes
from helpers import run_spr as spr
from spr_plugin.cli import build_parser
from spr_plugin.config_file import CONFIG_COMMANDS, expand_config_argv
from spr_plugin.llamafactory.shipped_recipes import RECIPES_DIR, shipped_files


def _parse(*argv):
    parser = build_parser()
    return parser.parse_args(expand_config_argv(parser, [str(a) for a in argv]))


def _write(path: Path, doc) -> Path:
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return path


def _one_error_line(p, *fragments):
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, p.stderr
    for frag in fragments:
        assert frag in errors[0], errors[0]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return render_scenes(tmp_path_factory.mktemp("cfg_scenes"), n_images=4, seed=5)


def test_precedence_flag_over_key_value_over_file_over_default(tmp_path):
    cfg = _write(tmp_path / "r.yaml", {"annotations": "a.json", "image_root": "imgs", "k": 3, "seed": 7, "out": "o.jsonl"})
    a = _parse("regions", cfg)
    assert (a.k, a.seed, a.regions_per_image, a.annotations, a.image_root) == (3, 7, 1, Path("a.json"), Path("imgs"))
    a = _parse("regions", cfg, "k=5", "regions_per_image=2")
    assert (a.k, a.seed, a.regions_per_image) == (5, 7, 2)
    a = _parse("regions", cfg, "k=5", "--k", "6", "--seed=8")
    assert (a.k, a.seed) == (6, 8)
    a = _parse("-v", "regions", cfg, "--reg", "4")  # argparse abbreviations on the command line still win
    assert a.verbose and a.regions_per_image == 4


def test_lists_switches_frame_and_repeatable_flags(tmp_path):
    doc = {
        "annotations": "a.json",
        "image_root": "imgs",
        "candidates_file": ["c1.jsonl", "c2.jsonl"],
        "variants": ["crop", "refs"],
        "overwrite": True,
        "fresh": False,
        "image_max_pixels": None,
        "image_min_pixels": 4096,
        "label_match": False,  # YAML 1.1 reads an unquoted off as false
    }
    a = _parse("build", _write(tmp_path / "b.yaml", doc))
    assert a.candidates_file == [Path("c1.jsonl"), Path("c2.jsonl")] and a.variants == ("crop", "refs")
    assert a.overwrite is True and a.fresh is False and a.label_match == "off"
    assert (a.image_max_pixels, a.image_min_pixels) == (None, 4096)
    a = _parse("build", tmp_path / "b.yaml", "overwrite=false", "candidates_file=[x.jsonl]")
    assert a.overwrite is False and a.candidates_file == [Path("x.jsonl")]
    # an appending flag (--images) given on the command line replaces the file's, never adds to it
    pair = _write(tmp_path / "p.yaml", {"regions": "r", "candidates": ["c"], "out": "o", "images": ["/data/a", "/data/b"]})
    assert _parse("pair", pair).images == [Path("/data/a"), Path("/data/b")]
    assert _parse("pair", pair, "--images", "/x").images == [Path("/x")]
    # the frame flags a record may decide stay "not given" when the file does not name them
    from spr_plugin.core.frame import NOT_GIVEN

    assert _parse("pair", pair).image_max_pixels is NOT_GIVEN


def test_eval_commands_take_a_config_file(tmp_path):
    cfg = _write(tmp_path / "e.yaml", {"model": "m", "regions": "r.jsonl", "out": "o.json", "k": 2, "iou_threshold": 0.6})
    a = _parse("eval", "region", cfg, "seed=4")
    assert (a.model, a.k, a.seed, a.iou_threshold) == ("m", 2, 4, 0.6)


def test_unknown_key_is_refused_in_one_line_naming_it(tmp_path):
    cfg = _write(tmp_path / "r.yaml", {"annotations": "a.json", "image_root": "imgs", "out": "o", "kk": 3})
    _one_error_line(spr("regions", cfg), "unknown key 'kk'", "spr regions", str(cfg))
    good = _write(tmp_path / "g.yaml", {"annotations": "a.json", "image_root": "imgs", "out": "o"})
    _one_error_line(spr("regions", good, "lamb=0.5"), "unknown key 'lamb'")
    _one_error_line(spr("regions", good, "lam=0.5"), "unknown key 'lam'", "spr regions")  # a setting of another command
    # the flag's name where the key is its dest, or a near name: said in the same line
    _one_error_line(spr("build", _write(tmp_path / "b.yaml", {"images": "imgs"})), "unknown key 'images'", "'image_root'")
    _one_error_line(spr("regions", good, "regions_per_imag=2"), "did you mean 'regions_per_image'")
    _one_error_line(spr("regions", _write(tmp_path / "l.yaml", "- k\n- 4\n")), "expected a mapping")
    _one_error_line(spr("regions", tmp_path / "missing.yaml"), "not found")
    _one_error_line(spr("build", _write(tmp_path / "s.yaml", {"overwrite": "yes please"})), "overwrite must be true or false")


def test_a_hostile_config_file_is_refused_within_the_budget(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    p = spr("regions", _write(tmp_path / "bomb.yaml", bomb))
    _one_error_line(p)
    assert len(p.stderr) < 2000


def test_config_file_run_equals_the_same_flags(scenes, tmp_path):
    """The same build from a file (plus an override) and from flags: the same bytes in every output."""
    images = scenes.parent / "images"
    regions = tmp_path / "regions.jsonl"
    assert spr("regions", "--annotations", scenes, "--images", images, "--k", "2", "--out", regions).returncode == 0
    write_candidates(regions, tmp_path / "candidates.jsonl")
    outs = {}
    for how in ("flags", "file"):
        root = tmp_path / how
        (root / "data").mkdir(parents=True)
        settings = {
            "annotations": str(scenes),
            "image_root": str(images),
            "k": 2,
            "candidates_file": [str(tmp_path / "candidates.jsonl")],
            "min_margin": 0.0,
            "refine_policy": "strip",
            "work_dir": str(root / "work"),
            "dataset_dir": str(root / "data"),
            "name": "spr_cfg",
        }
        if how == "flags":
            flags = ["--annotations", scenes, "--images", images, "--k", "2", "--candidates", tmp_path / "candidates.jsonl"]
            flags += ["--min-margin", "0", "--refine-policy", "strip", "--work-dir", root / "work"]
            p = spr("build", *flags, "--dataset-dir", root / "data", "--name", "spr_cfg")
        else:
            cfg = _write(root / "build.yaml", {**settings, "refine_policy": "correct", "k": 9})
            p = spr("build", cfg, "refine_policy=strip", "--k", "2")  # override and flag: back to the flags' values
        assert p.returncode == 0, p.stderr
        outs[how] = p.stdout.replace(str(root), "ROOT")
    assert outs["flags"] == outs["file"]
    for rel in ("data/spr_cfg.jsonl", "data/spr_cfg_chosen.jsonl", "data/spr_cfg.pairs.jsonl", "work/pairs.jsonl"):
        flags, file = (tmp_path / how / rel for how in ("flags", "file"))
        assert flags.read_text().replace(str(tmp_path / "flags"), "ROOT") == file.read_text().replace(
            str(tmp_path / "file"), "ROOT"
        )
    summary = json.loads((tmp_path / "file" / "work" / "summary.json").read_text())
    assert summary["config"]["pairing"]["refine_policy"] == "strip" and summary["config"]["regions"]["k"] == 2


def _command_of(name: str) -> tuple[str, ...]:
    for path in sorted(CONFIG_COMMANDS, key=len, reverse=True):
        if name.startswith("_".join(path) + "_"):
            return path
    raise AssertionError(f"shipped config {name}: its name must start with the command (build_, pair_, eval_rec_, ...)")


def test_shipped_configs_parse_for_their_command_and_are_listed():
    configs = [rel for rel in shipped_files() if rel.parts[0] == "configs"]
    assert {Path("configs/build_coco_qwen2vl.yaml"), Path("configs/regions_coco.yaml")} <= set(configs)
    for rel in configs:
        path = _command_of(rel.stem)
        a = _parse(*path, RECIPES_DIR / rel)
        assert a.command == path[0]
    listed = spr("recipes")
    assert listed.returncode == 0 and "configs/build_coco_qwen2vl.yaml" in listed.stdout


def test_each_config_command_says_so_in_its_help():
    parser = build_parser()
    for path in CONFIG_COMMANDS:
        sub = parser
        for name in path:
            (action,) = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
            sub = action.choices[name]
        assert f"spr {' '.join(path)} CONFIG.yaml" in sub.format_help()
