"""Write preference pairs as a LLaMA-Factory ShareGPT ranking dataset and register it.

Layout, chosen so that LLaMA-Factory resolves every path without extra settings (relative image paths
are joined to ``media_dir``, which defaults to ``dataset_dir``, not to the json file's folder)::

    <dataset_dir>/dataset_info.json          entries <name> and <name>_chosen merged in
    <dataset_dir>/<name>.jsonl               one record per pair (DPO, ``ranking``)
    <dataset_dir>/<name>_chosen.jsonl        the same prompts with the chosen answer only (SFT, the paper's ablation)
    <dataset_dir>/<name>.pairs.jsonl         the full score breakdown of every pair (for humans/tools)
    <dataset_dir>/<name>/images/...          images, referenced as "<name>/images/<sha256[:16]>_<file name>"
    <dataset_dir>/<name>.spr-files.json      the files this export wrote, with sizes and SHA-256s

Records follow LLaMA-Factory's contract: ``conversations`` is the prompt (one user turn, one ``<image>``
for the one image), ``chosen``/``rejected`` are single ``{"from": "gpt", "value": ...}`` dicts. A chosen-only
record is the conversation ``[human prompt, gpt chosen]`` with the same images.

Spr deletes and replaces only what spr wrote (:mod:`spr_plugin.core.owned`): every file an export will write is
planned and checked (inside the folder, no symlink at any level, names within 255 bytes, not a file of the
user's) before the first write; the plan is recorded in ``<name>.spr-files.json`` before the first write, so an
interrupted export is finished by running the same command again; ``--overwrite`` replaces the companion files
of the name and removes only files the record lists whose content is still what spr wrote. A pair whose image is
missing or unusable is skipped and counted, not the end of an export of thousands.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock
from tqdm.auto import tqdm

from spr_plugin.core.errors import ConfigError, SPRError
from spr_plugin.core.frame import ImageFrame
from spr_plugin.core.images import check_image_cached, content_file_name, copy_verified, region_image
from spr_plugin.core.jsonl import dumps
from spr_plugin.core.owned import OwnedFiles, Stamp, file_is_ours, file_matches, is_temp_name, stamp_of, write_bytes
from spr_plugin.core.paths import ImageRoots, check_write_path, image_roots, make_real_dirs
from spr_plugin.core.preflight import check_dataset_name
from spr_plugin.core.records import PreferencePair
from spr_plugin.core.sanitize import SanitizeStats, sanitize_answer
from spr_plugin.core.sharegpt import ranking_record
from spr_plugin.families.box_formats import BoxFormat
from spr_plugin.families.profiles import profile_of
from spr_plugin.families.prompts import training_prompt
from spr_plugin.llamafactory.recipe_check import META_SUFFIX, meta_text
from spr_plugin.llamafactory.registry import (
    DATASET_INFO,
    build_entries,
    check_can_register_entries,
    chosen_sft_name,
    register_datasets,
)

IMAGE_MODES = ("copy", "link", "absolute")
#: The record of the files an export of ``<name>`` wrote (:class:`spr_plugin.core.owned.OwnedFiles`).
RECORD_SUFFIX = ".spr-files.json"
#: The record is saved after this many copied images (and after the last): a killed export forgets at most these.
RECORD_EVERY = 200
#: How many skipped pairs a summary names (all are counted).
SKIP_EXAMPLES = 5


@dataclass(frozen=True)
class ExportConfig:
    dataset_dir: Path
    name: str = "spr_qwen2vl"
    image_mode: str = "copy"  # copy: self-contained folder; link: hard links (same disk); absolute: no copies
    overwrite: bool = False
    #: The frame the candidates were sampled in; recorded in ``<name>.spr.json`` so a recipe can be checked.
    frame: ImageFrame = field(default_factory=ImageFrame)
    #: The folders every image of the pairs must lie under (:class:`ImageRoots`; ``spr export`` passes its
    #: ``--images``). A pairs file is data from elsewhere: without this check a record naming ``/etc/shadow``
    #: would copy it into a dataset that may be published. None (library use with pairs built in process)
    #: trusts the root each region recorded when it was sampled.
    image_root: ImageRoots | Path | None = None
    #: Files (names in ``dataset_dir``) the caller writes after the export with :func:`write_companion`, e.g. the
    #: build's dataset card: checked with the others before the first write, the export finishes when they are written.
    companions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.image_mode not in IMAGE_MODES:
            raise ConfigError(f"unknown image mode {self.image_mode!r}; choose one of {', '.join(IMAGE_MODES)}")
        check_dataset_name(self.name)


@dataclass(frozen=True)
class ExportResult:
    dataset_file: Path
    dataset_info: Path
    records: int
    images: int
    images_copied: int = 0
    #: Files of an earlier export of the name that the new one does not write (removed: still spr's content).
    stale_images_removed: int = 0
    sanitized: dict[str, Any] | None = None
    #: Pairs left out because their image is missing or unusable, by reason, and the first few of them named.
    pairs_skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: tuple[str, ...] = ()
    #: The pairs the dataset holds (those not skipped), in order.
    pairs: tuple[PreferencePair, ...] = ()

    def skip_line(self) -> str | None:
        """One line naming what was skipped, or None."""
        if not self.pairs_skipped:
            return None
        counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(self.pairs_skipped.items()))
        named = "; ".join(self.skipped_examples)
        return f"skipped {sum(self.pairs_skipped.values())} pairs whose image is unusable ({counts}): {named}"


def json_lines(records: Iterable[dict[str, Any]]) -> str:
    """JSONL text: one record per line, as :func:`spr_plugin.core.jsonl.atomic_write_jsonl` writes it (never NaN)."""
    return "".join(dumps(r, ensure_ascii=False) + "\n" for r in records)


def record_name(name: str) -> str:
    return f"{name}{RECORD_SUFFIX}"


def data_file_names(name: str) -> tuple[str, ...]:
    """The registered data files of an export (what \"the dataset already exists\" means)."""
    return tuple(str(entry["file_name"]) for entry in build_entries(name).values())


def companion_names(name: str) -> tuple[str, ...]:
    """Every fixed-name file an export of ``name`` writes in ``dataset_dir``."""
    chosen = chosen_sft_name(name)
    return (f"{name}.pairs.jsonl", *data_file_names(name), f"{name}{META_SUFFIX}", f"{chosen}{META_SUFFIX}")


def _image_source(pair: PreferencePair, config: ExportConfig) -> Path | str:
    """The pair's image, or why it cannot be used (a reason of :func:`check_image`: the pair is skipped and
    counted). A path outside the image folders, or an image of another size than the region declares, is not a
    bad image but a file from elsewhere: refused in one line (:func:`spr_plugin.core.images.region_image`)."""
    source = region_image(pair.region, image_roots(config.image_root, pair.region))  # inside the roots, right size
    checked = check_image_cached(source)  # a text file, a truncated JPEG or a bomb is not exported
    return checked if isinstance(checked, str) else source


def pair_record(pair: PreferencePair, image: str, box_format: BoxFormat, stats: SanitizeStats | None = None) -> dict[str, Any]:
    """One ShareGPT ranking record; the answers pass through the sanitiser (no stray special token reaches training)."""
    keep = profile_of(box_format).kept_tokens
    chosen, n_chosen = sanitize_answer(pair.chosen.candidate.text, keep)
    rejected, n_rejected = sanitize_answer(pair.rejected.candidate.text, keep)
    if stats is not None:
        stats.add("exported_answers", n_chosen + n_rejected)
    return ranking_record(training_prompt(pair.region, box_format), chosen, rejected, [image])


@dataclass
class ExportPlan:
    """Everything an export will write, known before the first write: file contents and image sources by path."""

    pairs: list[PreferencePair]
    records: list[dict[str, Any]]
    texts: dict[str, bytes]
    images: dict[str, tuple[Path, Stamp]]
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    stats: SanitizeStats = field(default_factory=SanitizeStats)

    def stamps(self) -> dict[str, Stamp]:
        return {
            **{rel: Stamp.of_bytes(data) for rel, data in self.texts.items()},
            **{rel: s for rel, (_, s) in self.images.items()},
        }


def plan_export(
    pairs: Sequence[PreferencePair], config: ExportConfig, box_format: BoxFormat, meta: dict[str, Any] | None = None
) -> ExportPlan:
    """The files of the export. Images are named by content (:func:`content_file_name`), so two pictures that share
    an image id and a file name (``a/img.jpg``, ``b/img.jpg``) are two files and each record shows its own."""
    placed: dict[str, str] = {}
    plan = ExportPlan([], [], {}, {})
    for pair in pairs:
        source = _image_source(pair, config)
        if isinstance(source, Path) and str(source) not in placed:
            try:
                stamp = stamp_of(source)
            except OSError:
                source = "unreadable_image"
            else:
                if config.image_mode == "absolute":
                    placed[str(source)] = str(source)
                else:
                    rel = f"{config.name}/images/{content_file_name(source, stamp.sha256)}"
                    placed[str(source)] = rel
                    plan.images[rel] = (source, stamp)
        if isinstance(source, str):
            plan.skipped[source] += 1
            if len(plan.examples) < SKIP_EXAMPLES:
                shown = " ".join(f"region {pair.region.region_id}: {pair.region.image_path}".split())  # stays one line
                plan.examples.append(f"{shown} ({source.replace('_', ' ')})")
            continue
        plan.pairs.append(pair)
        plan.records.append(pair_record(pair, placed[str(source)], box_format, plan.stats))
    if not plan.pairs:
        counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(plan.skipped.items()))
        raise SPRError(f"no pair has a usable image ({counts}), e.g. {plan.examples[0]}")
    chosen = chosen_sft_name(config.name)
    facts = {
        "box_format": box_format.name,
        "template": profile_of(box_format).template,
        "frame": config.frame.to_dict(),
        **(meta or {}),
    }
    plan.texts = {
        # each pair names its image in the dataset (``spr show`` finds the copy when the original is gone)
        f"{config.name}.pairs.jsonl": json_lines(
            {**p.to_dict(), "dataset_image": r["images"][0]} for p, r in zip(plan.pairs, plan.records)
        ).encode(),
        f"{chosen}.jsonl": json_lines(chosen_sft_record(r) for r in plan.records).encode(),
        f"{config.name}{META_SUFFIX}": meta_text(facts).encode(),
        f"{chosen}{META_SUFFIX}": meta_text({**facts, "chosen_only_of": config.name}).encode(),
        f"{config.name}.jsonl": json_lines(plan.records).encode(),
    }
    return plan


@contextmanager
def _export_lock(dataset_dir: Path, name: str) -> Iterator[None]:
    """Serialise exports of one dataset name: the second waits, then sees the first one's dataset."""
    lock = check_write_path(dataset_dir, f".{name}.export.lock", "lock file")  # FileLock truncates what it opens
    dataset_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(lock):
        yield


def _check_replaceable(dataset_dir: Path, record: OwnedFiles, rel: str, overwrite: bool, stamp: Stamp | None = None) -> None:
    """``rel`` may be written: absent, already holding exactly ``stamp``, or spr's (the record says so).

    ``--overwrite`` never makes a file of the user's replaceable: it only lets an export replace a finished
    dataset spr wrote. A file spr has no record of (the user's, one changed since, or one of an export older
    than the record) must be moved away by the user, who alone knows whether it may be lost.
    """
    path = check_write_path(dataset_dir, rel, "output file")
    if not path.exists() or file_matches(path, stamp) or record.owns(rel):
        return
    hint = "move it away or choose another --name" if overwrite else "choose another --name or move it away"
    raise SPRError(f"{path} already exists and spr did not write it (or it changed since, or was copied here); {hint}")


def check_can_export(config: ExportConfig) -> OwnedFiles:
    """Raise before any work if the export would be refused (name registered differently, a dataset of the name
    exists, a file of the user's or a symlink where the export writes); returns the name's file record."""
    dataset_dir = Path(config.dataset_dir)
    check_can_register_entries(dataset_dir, build_entries(config.name), config.overwrite, same_file_only=True)
    for lock in (f".{config.name}.export.lock", f".{DATASET_INFO}.lock"):  # opening a lock file truncates it
        check_write_path(dataset_dir, lock, "lock file")
    if config.image_mode != "absolute":
        check_write_path(dataset_dir, f"{config.name}/images", "image folder", folder=True)
    record = OwnedFiles.load(dataset_dir, record_name(config.name))
    if not config.overwrite and record.complete:
        for file_name in data_file_names(config.name):
            if (dataset_dir / file_name).exists():
                raise SPRError(f"{dataset_dir / file_name} already exists; choose another --name or pass --overwrite")
    for rel in (*companion_names(config.name), *config.companions):
        _check_replaceable(dataset_dir, record, rel, config.overwrite)
    return record


def _check_plan(plan: ExportPlan, config: ExportConfig, record: OwnedFiles) -> None:
    """Every file the export will write, checked before the first write: an image path may hold only the same
    picture or one spr wrote (never replaced on ``--overwrite`` otherwise: that folder may hold the user's files)."""
    dataset_dir = Path(config.dataset_dir)
    for rel, data in plan.texts.items():
        _check_replaceable(dataset_dir, record, rel, config.overwrite, Stamp.of_bytes(data))
    for rel, (_, stamp) in plan.images.items():
        path = check_write_path(dataset_dir, rel, "image")
        if path.exists() and not file_matches(path, stamp) and not record.owns(rel):
            raise SPRError(
                f"{path} already exists (spr did not write it, or it changed since, or was copied here); "
                "move it away or choose another --name"
            )


def _remove_leftovers(dataset_dir: Path, name: str) -> None:
    """Temp files of a killed copy into ``<name>/images`` (spr's temp names only; that folder is written under the lock)."""
    folder = dataset_dir / name / "images"
    if folder.is_dir() and not folder.is_symlink():
        for entry in folder.iterdir():
            if is_temp_name(entry.name) and entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)


def _remove_stale(dataset_dir: Path, record: OwnedFiles, keep: set[str]) -> int:
    """Files an earlier export of the name wrote that this one does not: removed while they are spr's (identity and
    content as recorded); a file the user changed since, or one the record merely names, is kept."""
    removed = 0
    for rel, stamp in list(record.files.items()):
        if rel in keep:
            continue
        try:
            path = check_write_path(dataset_dir, rel, "stale file")
        except SPRError:
            continue  # a symlink now sits on the way: nothing is removed through it
        if file_is_ours(path, stamp):  # the very file spr wrote, unchanged: a forged record proves nothing
            path.unlink()
            removed += 1
    return removed


def chosen_sft_record(record: dict[str, Any]) -> dict[str, Any]:
    """The chosen-only SFT record of a DPO record: the prompt and the chosen answer as one conversation."""
    return {"conversations": [*record["conversations"], record["chosen"]], "images": record["images"]}


def export_dataset(
    pairs: Sequence[PreferencePair],
    config: ExportConfig,
    box_format: BoxFormat,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> ExportResult:
    """Write the dataset files and register both entries; refuses before writing if a name is taken.

    ``meta`` (e.g. the run's scoring and pairing settings) joins the frame, box format and template in
    ``<name>.spr.json``; the chosen-only companion gets the same file, so ``spr check-recipe`` checks SFT recipes too.
    Exports of one name are serialised by a lock in ``dataset_dir``; the checks run again inside it, so of two
    concurrent exports without ``--overwrite`` exactly one succeeds. The plan is recorded before the first write,
    so a rerun of an interrupted export recognises its partial output as spr's and completes it.
    """
    if not pairs:
        raise SPRError("no preference pairs to export (see the run summary for why candidates were skipped)")
    dataset_dir = Path(config.dataset_dir)
    entries = build_entries(config.name)
    record = check_can_export(config)  # a refused export creates nothing, not even the lock file
    plan = plan_export(pairs, config, box_format, meta)
    _check_plan(plan, config, record)
    with _export_lock(dataset_dir, config.name):
        record = check_can_export(config)  # again under the lock: a concurrent export of this name may just have finished
        _check_plan(plan, config, record)
        stamps = plan.stamps()
        later = dict.fromkeys(config.companions)
        record.begin({**stamps, **later})
        copied = 0
        if plan.images:
            make_real_dirs(dataset_dir, f"{config.name}/images", "image folder")
            _remove_leftovers(dataset_dir, config.name)
        bar = tqdm(plan.images.items(), desc="export images", unit="img", disable=not progress or len(plan.images) < 200)
        for rel, (source, stamp) in bar:
            dest = check_write_path(dataset_dir, rel, "image")
            if not file_matches(dest, stamp):  # a rerun keeps the copies it already made
                if copy_verified(source, dest, link=config.image_mode == "link"):
                    copied += 1
                    record.wrote(rel, stamp, save=copied % RECORD_EVERY == 0)  # its identity: spr's after an interruption
        record.save()
        for rel, data in plan.texts.items():
            if not file_matches(dataset_dir / rel, stamps[rel]):
                write_bytes(dataset_dir, rel, data, "output file")
                record.wrote(rel, stamps[rel])
        stale = _remove_stale(dataset_dir, record, set(stamps) | set(later))
        info = register_datasets(dataset_dir, entries, overwrite=config.overwrite, same_file_only=True)
        record.finish(stamps, later)
    return ExportResult(
        dataset_dir / f"{config.name}.jsonl",
        info,
        len(plan.records),
        len(plan.images) if config.image_mode != "absolute" else len({r["images"][0] for r in plan.records}),
        copied,
        stale,
        plan.stats.to_dict(),
        dict(plan.skipped),
        tuple(plan.examples),
        tuple(plan.pairs),
    )


def write_companion(config: ExportConfig, file_name: str, text: str) -> Path:
    """Write one of ``config.companions`` (e.g. the dataset card) after :func:`export_dataset`, checked like the
    export's own files and recorded as spr's; the export is finished once every companion is written."""
    if file_name not in config.companions:
        raise SPRError(f"{file_name} is not a companion file of this export")
    dataset_dir = Path(config.dataset_dir)
    data = text.encode()
    with _export_lock(dataset_dir, config.name):
        record = OwnedFiles.load(dataset_dir, record_name(config.name))
        _check_replaceable(dataset_dir, record, file_name, config.overwrite, Stamp.of_bytes(data))
        record.add(file_name, write_bytes(dataset_dir, file_name, data, "output file"))
    return dataset_dir / file_name
