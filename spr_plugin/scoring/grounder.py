"""Phrase grounding for the localization score: Grounding DINO boxes for the phrases a description names.

SPR's localization score "merges the localization boxes in the MLLM description and the Grounding DINO
results as the prediction set". This module is that detector step, through transformers'
``GroundingDinoForObjectDetection`` + ``GroundingDinoProcessor`` (any local checkpoint folder).

Choices, and why:

* **What is grounded.** The phrase labels the box parser found (the family's object references): all of
  them (``phrases="all"``, the paper's reading) or only those the model wrote without a valid box
  (``"unboxed"``), so unboxed mentions can still be matched. Plain-text descriptions with no reference
  tags have no phrases and get no detector boxes (no noun-phrase parser is assumed).
* **Where.** Inside the query region's crop; boxes are mapped back to full-image pixels. The description
  is about the region, and grounding in the whole image would find same-named objects outside it.
* **One box per phrase.** Each phrase's score per detector query is the best sigmoid logit over the
  phrase's tokens (Grounding DINO's own rule); the best query is kept if it reaches ``box_threshold``.
  A phrase names one object in these descriptions, and more boxes per phrase would only add unmatched
  predictions.
* **Duplicates.** A detector box that overlaps one of the model's own boxes (or an earlier detector box)
  at IoU > ``dedupe_iou`` is dropped (:func:`merge_predictions`). Under the default Hungarian metric the
  matching is one-to-one, so a duplicate could never double count anyway, but it would still raise
  ``n_pred`` and lower the F1; dropping it keeps the detector from penalising a description it merely
  confirms. Under the ``paper`` metric extra boxes cost nothing either way.
* **Detector false positives.** A detector box that matches no annotated object is left out of the
  prediction set again (:func:`spr_plugin.scoring.scorer.localization_with_detections`): the detector's mistake
  is not the description's, so the grounder can only add matches, never lower S_loc.

Refinement never sees these boxes: it rewrites the model's own text, so it snaps the model's boxes only.
Results are cached per (image, region, caption), so scoring the refined candidates (same phrases) and
repeated phrase sets cost nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spr_plugin.core.errors import ConfigError, SPRError
from spr_plugin.core.images import crop_rect, crop_region
from spr_plugin.core.records import Box, Region
from spr_plugin.scoring.localization import iou_matrix
from spr_plugin.settings import ScoringConfig, check_grounder


@dataclass(frozen=True)
class GrounderConfig:
    """How the phrase grounder runs; its settings' defaults are :class:`~spr_plugin.settings.ScoringConfig`'s
    (``grounder_box_threshold``, ``grounder_phrases``): defined once, there."""

    model: str
    box_threshold: float = ScoringConfig.grounder_box_threshold
    phrases: str = ScoringConfig.grounder_phrases
    dedupe_iou: float = 0.5
    batch_size: int = 4
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_grounder(self.box_threshold, self.phrases)


def build_caption(labels: Sequence[str]) -> tuple[str, list[str]]:
    """Grounding DINO's prompt form ``"a . b ."`` over the unique, lower-cased labels (and the labels)."""
    unique = list(dict.fromkeys(label.strip().lower() for label in labels if label.strip()))
    return " . ".join(unique) + " ." if unique else "", unique


def phrase_token_spans(offsets: Sequence[tuple[int, int]], caption: str, phrases: Sequence[str]) -> list[list[int]]:
    """Token indices of each phrase in ``caption``, from the tokenizer's character offsets."""
    spans, cursor = [], 0
    for phrase in phrases:
        start = caption.index(phrase, cursor)
        end = start + len(phrase)
        cursor = end
        spans.append([i for i, (a, b) in enumerate(offsets) if b > a and a >= start and b <= end])
    return spans


def select_phrase_boxes(
    probs: np.ndarray, boxes_cxcywh: np.ndarray, spans: Sequence[Sequence[int]], threshold: float
) -> list[tuple[int, float, np.ndarray]]:
    """For each phrase, the detector query that scores best on its tokens, if it reaches ``threshold``.

    ``probs`` is (queries, tokens) sigmoid scores, ``boxes_cxcywh`` (queries, 4) normalised boxes.
    Returns ``(phrase index, score, normalised cxcywh box)`` triples.
    """
    out = []
    for p, span in enumerate(spans):
        if not span:
            continue
        per_query = probs[:, list(span)].max(axis=1)
        q = int(per_query.argmax())
        if per_query[q] >= threshold:
            out.append((p, float(per_query[q]), boxes_cxcywh[q]))
    return out


def merge_predictions(model_boxes: Sequence[Box], detected: Sequence[Box], dedupe_iou: float) -> list[Box]:
    """Detector boxes that duplicate none of the boxes already in the prediction set (see module doc)."""
    kept: list[Box] = []
    for box in detected:
        existing = [*model_boxes, *kept]
        if existing and iou_matrix([box], existing).max() > dedupe_iou:
            continue
        kept.append(box)
    return kept


@dataclass
class PhraseGrounder:
    """Grounding DINO over region crops, batched and cached."""

    model: object  # GroundingDinoForObjectDetection
    processor: object  # GroundingDinoProcessor
    config: GrounderConfig
    _cache: dict[tuple, list[tuple[str, Box]]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, config: GrounderConfig) -> PhraseGrounder:
        from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

        if not Path(config.model).exists():
            raise ConfigError(f"grounder model folder {config.model!r} does not exist (pass --grounder PATH)")
        try:
            model = GroundingDinoForObjectDetection.from_pretrained(config.model).to(config.device).eval()
            processor = GroundingDinoProcessor.from_pretrained(config.model)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load a Grounding DINO model from {config.model!r}: {exc}") from exc
        return cls(model, processor, config)

    def labels_to_ground(self, phrases) -> list[str]:
        """The labels of parsed phrases (``GroundedPhrase``) this run grounds (see ``phrases`` mode)."""
        if self.config.phrases == "unboxed":
            return [p.label for p in phrases if p.label and p.box is None]
        return [p.label for p in phrases if p.label]

    def ground_batch(self, queries: Sequence[tuple[Region, Sequence[str]]]) -> list[list[Box]]:
        """Detector boxes (full-image pixels) for each ``(region, labels)`` query, one box per phrase at most."""
        return [[box for _, box in found] for found in self.ground_labelled(queries)]

    def ground_labelled(self, queries: Sequence[tuple[Region, Sequence[str]]]) -> list[list[tuple[str, Box]]]:
        """Like :meth:`ground_batch`, each box with the phrase it grounds (label-aware S_loc needs it)."""
        keys = []
        todo: dict[tuple, tuple[Region, str, list[str]]] = {}
        for region, labels in queries:
            caption, phrases = build_caption(labels)
            key = (region.image_path, region.box, caption)
            keys.append(key)
            if caption and key not in self._cache and key not in todo:
                todo[key] = (region, caption, phrases)
        # Only crops of one size share a forward pass: padding images to a common size changes
        # Grounding DINO's output, and a box must not depend on which other regions were in the batch.
        by_size: dict[tuple[int, int], list] = {}
        for key, item in todo.items():
            by_size.setdefault(_crop_size(item[0]), []).append((key, item))
        for pending in by_size.values():
            for start in range(0, len(pending), self.config.batch_size):
                self._run(pending[start : start + self.config.batch_size])
        return [list(self._cache.get(k, [])) for k in keys]

    @torch.inference_mode()
    def _run(self, batch: list[tuple[tuple, tuple[Region, str, list[str]]]]) -> None:
        crops = [_region_crop(region) for _, (region, _, _) in batch]
        captions = [caption for _, (_, caption, _) in batch]
        proc = self.processor
        # Grounding DINO reads at most ``max_text_len`` (256) tokens; phrases past that get no box.
        max_len = int(getattr(self.model.config, "max_text_len", 256))  # type: ignore[attr-defined]
        inputs = proc(  # type: ignore[operator]
            images=crops, text=captions, return_tensors="pt", padding=True, truncation=True, max_length=max_len
        )
        outputs = self.model(**inputs.to(self.model.device))  # type: ignore[operator]
        probs = outputs.logits.sigmoid().float().cpu().numpy()
        pred = outputs.pred_boxes.float().cpu().numpy()
        for i, (key, (region, caption, phrases)) in enumerate(batch):
            enc = proc.tokenizer(caption, return_offsets_mapping=True)  # type: ignore[attr-defined]
            spans = phrase_token_spans(enc["offset_mapping"], caption, phrases)
            spans = [[t for t in s if t < probs.shape[2]] for s in spans]
            found = select_phrase_boxes(probs[i], pred[i], spans, self.config.box_threshold)
            self._cache[key] = [(phrases[p], _to_pixels(box, region)) for p, _, box in found]


def _crop_rect(region: Region) -> tuple[int, int, int, int]:
    """The integer pixel rectangle of the region's crop (:func:`spr_plugin.core.images.crop_rect`)."""
    return crop_rect(region.box, region.width, region.height)


def _crop_size(region: Region) -> tuple[int, int]:
    x1, y1, x2, y2 = _crop_rect(region)
    return (x2 - x1, y2 - y1)


def _region_crop(region: Region) -> Image.Image:
    try:
        with Image.open(region.image_path) as im:
            image = im.convert("RGB")
    except OSError as exc:
        raise SPRError(f"cannot read image {region.image_path} for phrase grounding: {exc}") from exc
    return crop_region(image, region.box)


def _to_pixels(cxcywh: np.ndarray, region: Region) -> Box:
    """A normalised box of the region crop -> full-image pixels."""
    cx, cy, w, h = (float(v) for v in cxcywh)
    x0, y0, _, _ = _crop_rect(region)
    cw, ch = _crop_size(region)
    x1, y1 = x0 + (cx - w / 2) * cw, y0 + (cy - h / 2) * ch
    x2, y2 = x0 + (cx + w / 2) * cw, y0 + (cy + h / 2) * ch
    return Box(max(x1, 0.0), max(y1, 0.0), min(x2, float(region.width)), min(y2, float(region.height)))
