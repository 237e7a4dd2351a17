"""The public API (``spr_plugin/__init__.py``) and where names are imported from.

``import spr_plugin`` must stay light (the CLI's ``--help`` and scripts that read records import it), every name
it exports must resolve to the object its defining module holds, and no module of the project may import a name
through a module that merely imports it too (scripts/fix_reexport_imports.py rewrites such imports).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import spr_plugin

ROOT = Path(__file__).resolve().parents[1]


def _fixer():
    spec = importlib.util.spec_from_file_location("fix_reexport_imports", ROOT / "scripts" / "fix_reexport_imports.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_import_spr_plugin_imports_nothing_heavy():
    code = "import json, sys, spr_plugin; print(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    loaded = set(json.loads(out))
    heavy = {"torch", "transformers", "numpy", "PIL", "pycocotools", "sentence_transformers", "llamafactory", "trl"}
    assert not heavy & loaded, heavy & loaded
    assert not {m for m in loaded if m.startswith("spr_plugin.")}, "the package imports its modules on first use only"


@pytest.mark.parametrize("name", spr_plugin.__all__)
def test_every_public_name_resolves_to_its_defining_module(name):
    value = getattr(spr_plugin, name)
    if name == "__version__":
        assert isinstance(value, str) and value
        return
    module = spr_plugin._MODULE_OF[name]
    assert value is getattr(importlib.import_module(module), name)
    # the module named is where the name is *defined*, not a module that imports it
    defines, _ = _fixer().defining_module(module, name, _fixer().module_files(ROOT))
    assert defines, f"{name} is not defined in {module}"


def test_dir_lists_the_public_names_and_unknown_names_fail():
    assert set(spr_plugin.__all__) <= set(dir(spr_plugin))
    assert {"Region", "BuildConfig", "get_box_format", "score_refine_pair", "export_dataset", "__version__"} <= set(
        spr_plugin.__all__
    )
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        spr_plugin.not_a_name  # noqa: B018
    from spr_plugin import PreferencePair, sample_regions  # the lazy names import like any other

    assert PreferencePair.__module__ == "spr_plugin.core.records" and callable(sample_regions)


def test_no_module_imports_a_name_through_a_module_that_does_not_define_it():
    found = _fixer().find_reexports(ROOT)
    assert not found, "run `python scripts/fix_reexport_imports.py`:\n" + "\n".join(map(str, found))


def _write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_fixer_rewrites_to_the_defining_module_and_is_idempotent(tmp_path):
    _write(
        tmp_path, "pyproject.toml", '[tool.ruff]\nline-length = 130\n[tool.ruff.lint.isort]\nknown-first-party = ["spr_plugin"]\n'
    )
    _write(tmp_path, "spr_plugin/__init__.py", "")
    _write(tmp_path, "spr_plugin/core/__init__.py", "")
    _write(tmp_path, "spr_plugin/core/defs.py", "LIMIT = 3\n\n\ndef helper():\n    return LIMIT\n")
    _write(tmp_path, "spr_plugin/core/listed.py", 'from spr_plugin.core.defs import helper\n\n__all__ = ["helper"]\n')
    _write(tmp_path, "spr_plugin/middle.py", "from spr_plugin.core.defs import LIMIT, helper\n\nOWN = LIMIT + helper()\n")
    _write(
        tmp_path,
        "bench/script.py",
        "import sys\n\nsys.path.insert(0, '.')\n\n"
        "from spr_plugin.middle import LIMIT, OWN  # noqa: E402\n"
        "from spr_plugin.middle import helper as h  # noqa: E402\n"
        "from spr_plugin.core import defs  # noqa: E402\n"
        "from spr_plugin.core.listed import helper  # noqa: E402\n\n"
        "print(LIMIT, OWN, h, defs, helper)\n\n\n"
        "def f():\n    from spr_plugin.middle import LIMIT\n\n    return LIMIT\n",
    )
    fixer = _fixer()
    found = fixer.find_reexports(tmp_path)
    # a submodule, a name the module assigns and a name its __all__ lists are not re-exports
    assert sorted((r.line, r.name, r.source) for r in found) == [
        (5, "LIMIT", "spr_plugin.core.defs"),
        (6, "helper", "spr_plugin.core.defs"),
        (14, "LIMIT", "spr_plugin.core.defs"),
    ]
    assert fixer.main(["--root", str(tmp_path)]) == 0
    text = (tmp_path / "bench/script.py").read_text()
    assert (
        "from spr_plugin.core.defs import LIMIT  # noqa: E402\nfrom spr_plugin.core.defs import helper as h  # noqa: E402\n"
        in text
    )
    assert "from spr_plugin.middle import OWN  # noqa: E402\n" in text
    assert "    from spr_plugin.core.defs import LIMIT\n" in text
    fixer._parse.cache_clear()
    assert fixer.find_reexports(tmp_path) == []
    ruff = Path(sys.executable).with_name("ruff")
    subprocess.run([str(ruff), "check", "--select", "E,F,I", str(tmp_path)], cwd=tmp_path, check=True)
    assert fixer.main(["--root", str(tmp_path)]) == 0 and (tmp_path / "bench/script.py").read_text() == text
