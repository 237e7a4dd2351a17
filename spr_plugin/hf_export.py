"""``spr export-hf``: a built LLaMA-Factory ranking dataset as a Hugging Face ``datasets`` parquet for TRL.

Users who train with TRL's ``DPOTrainer`` directly want its conversational preference columns, not
LLaMA-Factory's ShareGPT: ``prompt`` (a user turn whose content lists ``{"type": "image"}`` and
``{"type": "text"}`` parts in the order of the ``<image>`` placeholders), ``chosen`` and ``rejected``
(one assistant turn each) and ``images`` (decoded by an ``Image`` feature, bytes embedded in the
parquet so the file is self-contained). Records are read through ``dataset_info.json`` so the
columns and tags a user registered are honoured, and every image path must stay inside the dataset
folder (see :mod:`spr_plugin.paths`), or, for ``--image-mode absolute`` datasets, under the folder given
with ``--images``; each must decode as an image, so no other file can end up in the parquet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SPRError
from .images import require_image
from .jsonl import atomic_output, read_dataset_records
from .paths import contained_path
from .registry import read_dataset_info

IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class HFExportResult:
    parquet: Path
    rows: int


def _read_records(path: Path) -> list[Any]:
    if not path.is_file():
        raise SPRError(f"dataset file not found: {path}")
    return [record for _, record in read_dataset_records(path)]


def _content(text: str) -> list[dict[str, str | None]]:
    """Split ``<image>`` placeholders out of a message into TRL's typed content parts."""
    parts: list[dict[str, str | None]] = []
    for i, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if i > 0:
            parts.append({"type": "image", "text": None})
        if chunk:
            parts.append({"type": "text", "text": chunk})
    return parts


def trl_row(
    record: dict[str, Any], entry: dict[str, Any], dataset_dir: Path, where: str, image_root: Path | None = None
) -> dict[str, Any]:
    """One ShareGPT ranking record -> ``{prompt, chosen, rejected, images}`` in TRL's conversational form."""
    cols = {
        "messages": "conversations",
        "chosen": "chosen",
        "rejected": "rejected",
        "images": "images",
        **entry.get("columns", {}),
    }
    tags = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt", **entry.get("tags", {})}
    role_map = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", "system": "system"}
    try:
        prompt = [
            {"role": role_map.get(m[tags["role_tag"]], "user"), "content": _content(str(m[tags["content_tag"]]))}
            for m in record[cols["messages"]]
        ]
        chosen = [{"role": "assistant", "content": _content(str(record[cols["chosen"]][tags["content_tag"]]))}]
        rejected = [{"role": "assistant", "content": _content(str(record[cols["rejected"]][tags["content_tag"]]))}]
        image_paths = list(record.get(cols["images"]) or [])
    except (KeyError, TypeError) as exc:
        raise SPRError(f"{where}: not a ShareGPT ranking record ({type(exc).__name__}: {exc})") from None
    images = []
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
            path = contained_path(image_root, p, f"{where}: image")
        else:
            path = contained_path(dataset_dir, p, f"{where}: image")
        if not path.is_file():
            raise SPRError(f"{where}: image not found: {path}")
        require_image(path, f"{where}: image")  # only real images are embedded, never an arbitrary file
        images.append({"bytes": path.read_bytes(), "path": path.name})  # embedded: the parquet travels alone
    n_placeholders = sum(part["type"] == "image" for m in prompt for part in m["content"])
    if n_placeholders != len(images):
        raise SPRError(f"{where}: {n_placeholders} <image> placeholders but {len(images)} images")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "images": images}


def export_hf(dataset_dir: str | Path, name: str, out: str | Path, image_root: str | Path | None = None) -> HFExportResult:
    """Write ``<out>/<name>.parquet`` (images embedded) and return its path; load it back with
    ``datasets.load_dataset("parquet", data_files=...)``."""
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
    records = _read_records(data_file)
    if not records:
        raise SPRError(f"{data_file} holds no records")
    root = None if image_root is None else Path(image_root)
    rows = [trl_row(r, entry, dataset_dir, f"{data_file}:{i + 1}", root) for i, r in enumerate(records)]
    features = datasets.Features(
        {
            "prompt": datasets.List({"role": datasets.Value("string"), "content": datasets.List(_part())}),
            "chosen": datasets.List({"role": datasets.Value("string"), "content": datasets.List(_part())}),
            "rejected": datasets.List({"role": datasets.Value("string"), "content": datasets.List(_part())}),
            "images": datasets.List(datasets.Image()),
        }
    )
    ds = datasets.Dataset.from_list(rows, features=features)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parquet = out / f"{name}.parquet"
    with atomic_output(parquet, "wb") as f:
        ds.to_parquet(f)
    return HFExportResult(parquet, len(rows))


def _part() -> dict[str, Any]:
    import datasets

    return {"type": datasets.Value("string"), "text": datasets.Value("string")}
