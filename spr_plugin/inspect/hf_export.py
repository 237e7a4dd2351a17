"""``spr export-hf``: a built LLaMA-Factory ranking dataset as a Hugging Face ``datasets`` parquet for TRL.

Users who train with TRL's ``DPOTrainer`` directly want its conversational preference columns, not
LLaMA-Factory's ShareGPT: ``prompt`` (a user turn whose content lists ``{"type": "image"}`` and
``{"type": "text"}`` parts in the order of the ``<image>`` placeholders), ``chosen`` and ``rejected``
(one assistant turn each) and ``images`` (decoded by an ``Image`` feature, bytes embedded in the
parquet so the file is self-contained). Records are read through ``dataset_info.json`` so the
columns and tags a user registered are honoured, and every image path must stay inside the dataset
folder (see :mod:`spr_plugin.core.paths`), or, for ``--image-mode absolute`` datasets, under the folder given
with ``--images``; each must decode as an image, so no other file can end up in the parquet.

The ShareGPT records do not say in which coordinate frame their boxes are written, so every row also
carries the facts a trainer needs to show the model the frame the boxes were written for, as the build
recorded them in ``<name>.spr.json`` (:mod:`spr_plugin.llamafactory.recipe_check`; for a dataset spr did not build, the
values given as ``--box-format`` / ``--image-max-pixels`` / ``--image-min-pixels``, else the build's defaults):

* ``box_format``: ``qwen2_vl`` ([0,1000) grid), ``qwen2_5_vl`` / ``qwen2_5_vl_json`` (resized-input pixels),
  ``qwen3_vl`` / ``internvl`` / ``glm4v`` ([0,1000] grid);
* ``image_max_pixels`` / ``image_min_pixels``: LLaMA-Factory's pre-resize bounds (null: no pre-resize),
  which :mod:`spr_plugin.trl.dpo` applies before the processor, as LLaMA-Factory does;
* ``template``: LLaMA-Factory's chat template for the model family of the box format (``qwen2_vl``, ...);
* ``prompt_template``: the user turn with ``{box}`` for the query region (the family's
  :func:`spr_plugin.families.prompts.prompt_template`),
  null for a record whose user turn does not follow it (a dataset registered by hand).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spr_plugin.core.errors import SPRError
from spr_plugin.core.frame import NOT_GIVEN, ImageFrame
from spr_plugin.core.images import raw_frame_bytes, require_image
from spr_plugin.core.jsonl import read_dataset_records
from spr_plugin.core.options import DEFAULT_BOX_FORMAT
from spr_plugin.core.owned import OwnedFiles, Stamp, new_temp
from spr_plugin.core.paths import ImageRoots, contained_path, new_file_mode, require_real_inside
from spr_plugin.core.sharegpt import DEFAULT_TAGS, IMAGE_TOKEN, RANKING_COLUMNS, content_parts
from spr_plugin.families.box_formats import BoxFormat
from spr_plugin.families.profiles import get_box_format, profile_of
from spr_plugin.families.prompts import PROMPT_TEMPLATE
from spr_plugin.families.prompts import prompt_template as family_prompt_template
from spr_plugin.llamafactory.recipe_check import meta_path, read_meta
from spr_plugin.llamafactory.registry import read_dataset_info


@dataclass(frozen=True)
class HFExportResult:
    parquet: Path
    rows: int


@dataclass(frozen=True)
class FrameFacts:
    """What every exported row records about how its boxes and images are to be read (see the module docstring)."""

    box_format: str = DEFAULT_BOX_FORMAT
    frame: ImageFrame = field(default_factory=ImageFrame)

    def __post_init__(self) -> None:
        get_box_format(self.box_format)  # ConfigError for an unknown name

    def box_format_obj(self) -> BoxFormat:
        """The parser/writer of these facts: the Qwen2.5-VL formats work in pixels of the image after this frame's
        pre-resize (Qwen2-VL's [0,1000) grid does not depend on it)."""
        return get_box_format(self.box_format, self.frame)

    def columns(self, prompt_template: str | None | object = NOT_GIVEN) -> dict[str, Any]:
        """The rows' columns; ``prompt_template`` defaults to the family's training prompt (None: a foreign prompt)."""
        return {
            "box_format": self.box_format,
            **self.frame.to_dict(),
            "template": profile_of(self.box_format_obj()).template,
            "prompt_template": family_prompt_template(self.box_format) if prompt_template is NOT_GIVEN else prompt_template,
        }

    @classmethod
    def of_dataset(
        cls,
        dataset_dir: str | Path,
        name: str,
        box_format: str | None = None,
        image_max_pixels: int | None | object = NOT_GIVEN,
        image_min_pixels: int | None | object = NOT_GIVEN,
    ) -> FrameFacts:
        """The facts a built dataset recorded (``<name>.spr.json``); given values must agree with them. For a
        dataset spr did not build, the given values, else the build's defaults. Bad values are refused first."""
        given = {"box_format": box_format, "image_max_pixels": image_max_pixels, "image_min_pixels": image_min_pixels}
        given = {k: v for k, v in given.items() if v is not NOT_GIVEN and not (k == "box_format" and v is None)}
        meta = read_meta(dataset_dir, name)
        recorded = {"box_format": DEFAULT_BOX_FORMAT, **ImageFrame().to_dict()}
        if meta is not None:
            recorded = {"box_format": meta.get("box_format", DEFAULT_BOX_FORMAT), **ImageFrame.from_dict(meta["frame"]).to_dict()}
        values = {**recorded, **given}
        facts = cls(values["box_format"], ImageFrame(values["image_max_pixels"], values["image_min_pixels"]))  # validates
        for key, value in given.items():
            if meta is not None and value != recorded[key]:
                raise SPRError(
                    f"dataset {name!r} was built with {key}={recorded[key]} ({meta_path(dataset_dir, name)}) but "
                    f"--{key.replace('_', '-')} says {value}; leave it out to use the recorded value"
                )
        return facts


def follows_prompt_template(prompt_text: str, template: str = PROMPT_TEMPLATE) -> bool:
    """True if a user turn is SPR's (any box); records registered by hand may ask something else."""
    return re.match(re.escape(template).replace(re.escape("{box}"), ".+?") + r"\Z", prompt_text, re.DOTALL) is not None


def write_parquet(ds, path: Path) -> None:
    """``ds.to_parquet`` into a temporary sibling, then renamed: a killed export never leaves half a file. The temp
    file is new and short-named (:func:`spr_plugin.core.owned.new_temp`): a fixed ``.<name>.tmp`` would overwrite and
    then delete a file of the user's of that name, and a long ``--out`` name would exceed the file-name limit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp(path.parent)
    try:
        ds.to_parquet(str(tmp))
        os.chmod(tmp, new_file_mode())  # not mkstemp's 0600: as readable as a file the user's tools write
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def frame_features() -> dict[str, Any]:
    """``datasets`` features of :meth:`FrameFacts.columns`."""
    import datasets

    return {
        "box_format": datasets.Value("string"),
        "image_max_pixels": datasets.Value("int64"),
        "image_min_pixels": datasets.Value("int64"),
        "template": datasets.Value("string"),
        "prompt_template": datasets.Value("string"),
    }


def conversation_feature():
    """A list of ``{role, content: [{type, text}]}`` turns, TRL's conversational form."""
    import datasets

    part = {"type": datasets.Value("string"), "text": datasets.Value("string")}
    return datasets.List({"role": datasets.Value("string"), "content": datasets.List(part)})


def _read_records(path: Path) -> list[Any]:
    if not path.is_file():
        raise SPRError(f"dataset file not found: {path}")
    return [record for _, record in read_dataset_records(path)]


def trl_content(text: str) -> list[dict[str, str | None]]:
    """Split ``<image>`` placeholders out of a message into TRL's typed content parts."""
    return content_parts(text, lambda _: {"type": "image", "text": None})


def trl_row(
    record: dict[str, Any], entry: dict[str, Any], dataset_dir: Path, where: str, image_root: ImageRoots | Path | None = None
) -> dict[str, Any]:
    """One ShareGPT ranking record -> ``{prompt, chosen, rejected, images}`` in TRL's conversational form."""
    cols = {**RANKING_COLUMNS, **entry.get("columns", {})}
    tags = {**DEFAULT_TAGS, **entry.get("tags", {})}
    role_map = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", "system": "system"}
    try:
        prompt = [
            {"role": role_map.get(m[tags["role_tag"]], "user"), "content": trl_content(str(m[tags["content_tag"]]))}
            for m in record[cols["messages"]]
        ]
        chosen = [{"role": "assistant", "content": trl_content(str(record[cols["chosen"]][tags["content_tag"]]))}]
        rejected = [{"role": "assistant", "content": trl_content(str(record[cols["rejected"]][tags["content_tag"]]))}]
        image_paths = list(record.get(cols["images"]) or [])
    except (KeyError, TypeError) as exc:
        raise SPRError(f"{where}: not a ShareGPT ranking record ({type(exc).__name__}: {exc})") from None
    images = []
    inside = ImageRoots([dataset_dir], "--dataset-dir")
    for p in image_paths:
        if not isinstance(p, str) or not p:
            raise SPRError(f"{where}: image entry {p!r} is not a file path")
        if Path(p).is_absolute():
            # --image-mode absolute datasets name images outside the folder: only under a root the user names.
            if image_root is None:
                raise SPRError(
                    f"{where}: image {p} lies outside {dataset_dir}; pass --images FOLDER if the dataset's images "
                    "really live there (--image-mode absolute)"
                )
            roots = image_root if isinstance(image_root, ImageRoots) else ImageRoots([image_root], "--images")
            path = roots.resolve(p, f"{where}: image")
        else:  # inside the dataset folder, symlinks resolved: a received dataset may link to the user's files
            path = inside.resolve(p, f"{where}: image")
        if not path.is_file():
            raise SPRError(f"{where}: image not found: {path}")
        require_image(path, f"{where}: image")  # only real images are embedded, never an arbitrary file
        # Embedded (the parquet travels alone), in the raw frame: datasets' Image feature applies EXIF orientation.
        images.append({"bytes": raw_frame_bytes(path), "path": path.name})
    n_placeholders = sum(part["type"] == "image" for m in prompt for part in m["content"])
    if n_placeholders != len(images):
        raise SPRError(f"{where}: {n_placeholders} <image> placeholders but {len(images)} images")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "images": images}


def export_hf(
    dataset_dir: str | Path,
    name: str,
    out: str | Path,
    facts: FrameFacts | None = None,
    image_root: ImageRoots | str | Path | None = None,
) -> HFExportResult:
    """Write ``<out>/<name>.parquet`` (images embedded) and return its path; load it back with
    ``datasets.load_dataset("parquet", data_files=...)``. ``facts``: the box format and image frame the dataset
    was built with (default: :meth:`FrameFacts.of_dataset`)."""
    import datasets

    dataset_dir = Path(dataset_dir)
    info = read_dataset_info(dataset_dir)
    if name not in info:
        raise SPRError(f"dataset {name!r} is not registered in {dataset_dir / 'dataset_info.json'}")
    entry = info[name]
    if (
        not isinstance(entry, dict)
        or not entry.get("ranking")
        or entry.get("formatting", "alpaca") != "sharegpt"
        or "file_name" not in entry
    ):
        raise SPRError(f"dataset {name!r} is not a local ShareGPT ranking dataset; only those can be exported")
    data_file = contained_path(dataset_dir, str(entry["file_name"]), f"dataset {name!r} file_name")
    require_real_inside(dataset_dir, data_file, label=f"dataset {name!r} file_name ")  # else its texts would be exported
    owned = _parquet_record(Path(out), name)  # before the work: a parquet of the user's is never replaced
    records = _read_records(data_file)
    if not records:
        raise SPRError(f"{data_file} holds no records")
    facts = facts or FrameFacts.of_dataset(dataset_dir, name)
    root = image_root if image_root is None or isinstance(image_root, ImageRoots) else Path(image_root)
    rows = []
    for i, record in enumerate(records):
        row = trl_row(record, entry, dataset_dir, f"{data_file}:{i + 1}", root)
        user_text = "".join(IMAGE_TOKEN if p["type"] == "image" else p["text"] or "" for p in row["prompt"][-1]["content"])
        template = family_prompt_template(facts.box_format)
        rows.append({**row, **facts.columns(template if follows_prompt_template(user_text, template) else None)})
    features = datasets.Features(
        {
            "prompt": conversation_feature(),
            "chosen": conversation_feature(),
            "rejected": conversation_feature(),
            "images": datasets.List(datasets.Image()),
            **frame_features(),
        }
    )
    parquet = Path(out) / f"{name}.parquet"
    _parquet_record(Path(out), name)  # again, right before the write
    owned.begin({parquet.name: None})
    write_parquet(datasets.Dataset.from_list(rows, features=features), parquet)
    stamp = Stamp.of_file(parquet)
    owned.wrote(parquet.name, stamp, save=False)
    owned.finish({parquet.name: stamp}, {})
    return HFExportResult(parquet, len(rows))


def _parquet_record(out: Path, name: str) -> OwnedFiles:
    """The record of the parquet ``export-hf`` writes in ``out`` (``.<name>.parquet.spr-files.json``), once
    ``<out>/<name>.parquet`` is known to be absent or the very file an earlier ``export-hf`` wrote: a parquet of the
    user's (or a symlink) at that path is one line, never replaced."""
    return OwnedFiles.load_replaceable(out, f".{name}.parquet.spr-files.json", [f"{name}.parquet"], "parquet")
