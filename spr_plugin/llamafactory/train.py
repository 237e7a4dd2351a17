"""Run ``llamafactory-cli train`` as a subprocess, offline, with its output shown and logged.

Training goes through the CLI users run rather than an in-process call, so what the plugin tests is
what users get, and LLaMA-Factory's global state (logging, accelerate) cannot leak into the caller.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from spr_plugin.core.errors import SPRError

#: No hub access at run time: every model and dataset must be local.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_DISABLED": "true",
    "TOKENIZERS_PARALLELISM": "false",
}

#: Run settings every local CPU training here uses: fresh preprocessing, no worker processes, no checkpoints
#: mid-run, float32 (CPUs here have no fast bf16) and no experiment trackers (they would try the network).
CPU_RUN_SETTINGS: dict[str, Any] = {
    "overwrite_cache": True,
    "preprocessing_num_workers": 1,
    "dataloader_num_workers": 0,
    "overwrite_output_dir": True,
    "save_strategy": "no",
    "bf16": False,
    "report_to": "none",
}


def llamafactory_cli() -> str:
    """The CLI next to the running interpreter (the venv's), else whatever is on PATH."""
    local = Path(sys.executable).with_name("llamafactory-cli")
    found = str(local) if local.exists() else shutil.which("llamafactory-cli")
    if not found:
        raise SPRError("llamafactory-cli not found: install LLaMA-Factory (pip install llamafactory) in this environment")
    return found


def write_yaml(path: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """A LLaMA-Factory recipe: ``key: value`` YAML in the order given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = json.loads(json.dumps(dict(config)))  # JSON values only (tuples become lists), as LLaMA-Factory reads them
    path.write_text(yaml.safe_dump(plain, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def run_train(
    recipe: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    *,
    log_path: str | os.PathLike,
    echo: bool = True,
    cwd: str | os.PathLike | None = None,
) -> None:
    """``llamafactory-cli train RECIPE key=value ...``; raises :class:`SPRError` with the log tail on failure."""
    recipe = Path(recipe)
    if not recipe.is_file():
        raise SPRError(f"training recipe not found: {recipe}")
    args = [llamafactory_cli(), "train", str(recipe)]
    args += [f"{k}={v}" for k, v in (overrides or {}).items()]
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=40)
    env = {**os.environ, **OFFLINE_ENV}
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail.append(line)
            if echo:
                sys.stderr.write(line)
        code = proc.wait()
    if code != 0:
        raise SPRError(f"llamafactory-cli train failed (exit {code}); full log: {log_path}\n" + "".join(tail))
