"""``spr export-grpo``: query regions as a prompt dataset for online RL (TRL's ``GRPOTrainer``) with the SPR reward.

GRPO samples its own completions, so the dataset holds prompts only, plus what the reward
(:class:`spr_plugin.trl.grpo_reward.SPRReward`) needs to score a completion against the annotations. TRL hands
every dataset column to reward functions as a keyword argument, so each row carries:

* ``prompt``: one user turn in TRL's conversational form, the DPO dataset's question
  (:data:`spr_plugin.families.prompts.PROMPT_TEMPLATE` with the query region written in the box format);
* ``images``: the full image, bytes embedded (an ``Image`` feature), so the parquet travels alone;
* ``region``: the query region as :meth:`spr_plugin.core.records.Region.to_dict` writes it (id, image id and path,
  original width and height, region box, annotated objects with category and box, all in original pixels);
* ``box_format``, ``image_max_pixels``, ``image_min_pixels``, ``prompt_template``: as in ``spr export-hf``
  (:class:`spr_plugin.inspect.hf_export.FrameFacts`); the reward refuses rows of another box format than its scorer's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spr_plugin.core.errors import SPRError
from spr_plugin.core.images import raw_frame_bytes, region_image, require_image
from spr_plugin.core.paths import ImageRoots, image_roots
from spr_plugin.core.records import Region
from spr_plugin.families.prompts import training_prompt
from spr_plugin.inspect.hf_export import FrameFacts, conversation_feature, frame_features, trl_content, write_parquet


@dataclass(frozen=True)
class GRPOExportResult:
    parquet: Path
    rows: int
    images: int


def region_feature():
    """``datasets`` feature of :meth:`Region.to_dict`."""
    import datasets

    box = datasets.List(datasets.Value("float64"))
    names = datasets.List(datasets.Value("string"))
    obj = {"ann_id": datasets.Value("int64"), "category": datasets.Value("string"), "box": box, "synonyms": names}
    ignored = {**obj, "crowd": datasets.Value("bool")}
    return {
        "region_id": datasets.Value("string"),
        "image_id": datasets.Value("int64"),
        "image_path": datasets.Value("string"),
        "width": datasets.Value("int64"),
        "height": datasets.Value("int64"),
        "box": box,
        "objects": datasets.List(obj),
        "seed_ann_id": datasets.Value("int64"),
        # What the annotations leave open (regions.py): the reward must not punish it either.
        "image_root": datasets.Value("string"),
        "ignored": datasets.List(ignored),
        "not_exhaustive": names,
        "absent": names,
        # Every category annotated in the image: naming another dataset category is a hallucination.
        "in_image": names,
    }


def grpo_row(region: Region, facts: FrameFacts, image_bytes: bytes) -> dict[str, Any]:
    """One prompt row: the DPO question about ``region``, its image and its annotations."""
    prompt = training_prompt(region, facts.box_format_obj())  # the region box in the frame the model will see
    return {
        "prompt": [{"role": "user", "content": trl_content(prompt)}],
        "images": [{"bytes": image_bytes, "path": Path(region.image_path).name}],
        "region": region.to_dict(),
        **facts.columns(),
    }


def _image_file(region: Region, image_root: ImageRoots | str | Path | None) -> Path:
    """The region's image, once it lies under the image folders (``--images``, default the regions file's
    folder; never the root the file records) and decodes as an image at the size the region declares:
    a regions file from elsewhere must not embed ``/etc/shadow`` or a private photo in the parquet."""
    path = region_image(region, image_roots(image_root, region))
    require_image(path, f"region {region.region_id}: image")
    return path


def export_grpo(
    regions: Sequence[Region],
    out: str | Path,
    facts: FrameFacts | None = None,
    image_root: ImageRoots | str | Path | None = None,
) -> GRPOExportResult:
    """Write the prompt parquet ``out`` (images embedded, in the raw frame) for the given regions; every image must
    lie under ``image_root`` (library default: the root each region recorded) and be a usable image."""
    import datasets

    parquet = Path(out)
    if parquet.suffix != ".parquet":
        raise SPRError(f"the output must be a .parquet file, got {parquet}")
    if not regions:
        raise SPRError("no query regions to export")
    facts = facts or FrameFacts()
    cache: dict[str, bytes] = {}  # one read per image, many regions may share it
    rows = []
    for region in regions:
        path = region.image_path
        if path not in cache:
            try:
                cache[path] = raw_frame_bytes(_image_file(region, image_root))  # datasets would apply EXIF
            except OSError as exc:
                raise SPRError(f"region {region.region_id}: cannot read image {path} ({exc.strerror or exc})") from None
        rows.append(grpo_row(region, facts, cache[path]))
    features = datasets.Features(
        {
            "prompt": conversation_feature(),
            "images": datasets.List(datasets.Image()),
            "region": region_feature(),
            **frame_features(),
        }
    )
    write_parquet(datasets.Dataset.from_list(rows, features=features), parquet)
    return GRPOExportResult(parquet, len(rows), len(cache))
