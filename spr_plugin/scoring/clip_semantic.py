"""CLIP semantic score, as in the paper: ``S_sem = ½ · (clip_crop + clip_local)``.

* ``clip_crop``: CLIP cosine between the cropped query region and the description (grounding
  stripped). Crops and texts go through sentence-transformers' CLIP support, one ``encode`` call per
  batch of *unique* crops and one per batch of unique text chunks.
* ``clip_local``: the paper adds "region embeddings extracted from the full image via a local attention
  layer", because a crop loses the context around the region. We implement that literally and
  without any training: the full image goes through CLIP's vision tower, and the **last** transformer
  layer is re-run for the class token with its attention restricted to the class token plus the patches
  that overlap the region. The result is projected like CLIP's own pooled output, so it lives in the
  same space as the text embedding. All earlier layers saw the whole image, so the embedding carries
  context; the last attention focuses it on the region. With the region covering every patch it equals
  CLIP's ordinary image embedding (a test checks this). We chose this over a crop with a context margin
  because it really uses the full image, costs one vision pass per unique image instead of one per
  region, and needs no margin hyper-parameter. It requires a CLIP ViT (``vision_model.encoder.layers``
  with ``q/k/v_proj``); other towers raise a :class:`~spr_plugin.core.errors.ConfigError`.

The full image is padded to a square (bottom/right, black) before CLIP's processor sees it: the
processor's centre crop would otherwise cut off the image's sides and the region's patches would be
wrong.

**Long descriptions.** CLIP's text encoder takes 77 tokens (start and end tokens included). SPR asks
for detailed descriptions, so ``long_text="chunk"`` (default) splits a longer text at word boundaries
into windows that fit, embeds every window and averages the unit vectors (then re-normalises), so
every word counts; ``"truncate"`` keeps only the first window, as CLIP itself would. ``stats`` counts
how many texts were over the limit and how many windows they made.

Cosines are clamped to [0, 1] as in the text scorer. Note that CLIP cosines of matching pairs are
small (about 0.2-0.35 for real checkpoints), so with λ = 0.8 the semantic spread between candidates is
narrower than the localization spread; see ``docs/scoring.md``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spr_plugin.core.errors import ConfigError, SPRError
from spr_plugin.core.images import crop_region
from spr_plugin.core.records import Box, Region, SemanticScore
from spr_plugin.settings import ScoringConfig, check_clip_long_text

logger = logging.getLogger(__name__)


def load_clip_model(name_or_path: str, device: str | None = None):  # -> SentenceTransformer
    """A sentence-transformers CLIP model from a local folder (or a hub id the user can reach).

    Works for a folder saved by sentence-transformers and for a plain transformers ``CLIPModel`` folder
    (``config.json`` + weights + processor files): sentence-transformers detects CLIP by itself.
    """
    from sentence_transformers import SentenceTransformer

    if not name_or_path:
        raise ConfigError("--semantic clip needs --clip-model PATH (a local CLIP folder)")
    try:
        model = SentenceTransformer(name_or_path, device=device or "cpu")
    except Exception as exc:  # noqa: BLE001 - any loading failure is the user's path or id
        where = "a local folder" if Path(name_or_path).exists() else "no local folder, and loading it as a hub id failed"
        raise ConfigError(f"cannot load CLIP model {name_or_path!r} ({where}): {exc}") from exc
    if "image" not in getattr(model, "modalities", ["image"]):
        raise ConfigError(f"{name_or_path!r} is not an image-text model (modalities: {model.modalities})")
    return model


def chunk_words(words: Sequence[str], counts: Sequence[int], budget: int) -> list[list[str]]:
    """Greedy windows of consecutive words whose token counts sum to at most ``budget``.

    A single word longer than the budget gets a window of its own (callers split such words first).
    """
    chunks: list[list[str]] = []
    current: list[str] = []
    used = 0
    for word, n in zip(words, counts):
        if current and used + n > budget:
            chunks.append(current)
            current, used = [], 0
        current.append(word)
        used += n
    if current:
        chunks.append(current)
    return chunks


def region_patch_mask(box: Box, side: float, image_size: int, patch_size: int) -> np.ndarray:
    """Which patches of the square, ``side``-pixel padded image overlap ``box`` (row-major, no CLS).

    At least the patch under the box centre is always selected, so tiny boxes still get a token.
    """
    grid = image_size // patch_size
    scale = image_size / side
    x1, y1, x2, y2 = (v * scale for v in box.as_list())
    edges = np.arange(grid) * patch_size
    cols = (edges + patch_size > x1) & (edges < x2)
    rows = (edges + patch_size > y1) & (edges < y2)
    mask = rows[:, None] & cols[None, :]
    if not mask.any():
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        mask[min(int(cy // patch_size), grid - 1), min(int(cx // patch_size), grid - 1)] = True
    return mask.reshape(-1)


def pad_to_square(image: Image.Image) -> Image.Image:
    """The image on a black square canvas (top-left aligned), so pixel coordinates do not move."""
    side = max(image.size)
    if image.size == (side, side):
        return image
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(image, (0, 0))
    return canvas


@dataclass
class ClipSemanticScorer:
    """Scores descriptions against regions with a sentence-transformers CLIP model (crop + local term)."""

    model: object  # SentenceTransformer wrapping a transformers CLIPModel
    batch_size: int = 32
    long_text: str = ScoringConfig.clip_long_text
    name: str = "clip"
    stats: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        check_clip_long_text(self.long_text)
        module = self.model[0]  # type: ignore[index]
        self._clip = module.model
        self._processor = module.processor
        vision = getattr(self._clip, "vision_model", None)
        layers = getattr(getattr(vision, "encoder", None), "layers", None)
        if vision is None or not layers or not hasattr(layers[-1].self_attn, "q_proj"):
            raise ConfigError(
                f"the CLIP local term needs a CLIP ViT vision tower; {type(self._clip).__name__} has none it can use"
            )
        self._vision = vision
        tok = self._processor.tokenizer
        limit = int(getattr(self._clip.config.text_config, "max_position_embeddings", 77))
        if 0 < int(getattr(tok, "model_max_length", limit) or limit) < limit:
            limit = int(tok.model_max_length)
        self.max_tokens = limit
        self.model.max_seq_length = limit  # type: ignore[attr-defined] - a safety net: never exceed positions

    @classmethod
    def load(
        cls, name_or_path: str, device: str | None = None, batch_size: int = 32, long_text: str = ScoringConfig.clip_long_text
    ):
        return cls(load_clip_model(name_or_path, device), batch_size=batch_size, long_text=long_text)

    # -- text side -----------------------------------------------------------------------------

    def text_windows(self, text: str) -> list[str]:
        """The text split into windows that fit CLIP's context (start/end tokens reserved)."""
        words = text.split()
        if not words:
            return [text]
        tok = self._processor.tokenizer
        budget = self.max_tokens - 2
        pieces: list[str] = []
        counts: list[int] = []
        for word, ids in zip(words, tok(words, add_special_tokens=False)["input_ids"]):
            if len(ids) <= budget:
                pieces.append(word)
                counts.append(len(ids))
                continue
            # A "word" longer than the whole context (e.g. a run of numbers with no spaces): split by tokens.
            for i in range(0, len(ids), budget):
                pieces.append(tok.decode(ids[i : i + budget]).strip())
                counts.append(len(ids[i : i + budget]))
        chunks = [" ".join(c) for c in chunk_words(pieces, counts, budget)]
        return chunks if self.long_text == "chunk" else chunks[:1]

    def embed_texts(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Unit-norm embedding of every unique text (window embeddings averaged), one encode call."""
        unique = list(dict.fromkeys(texts))
        windows = {t: self.text_windows(t) for t in unique}
        for t in unique:
            n_words = len(t.split())
            if len(windows[t]) > 1 or (n_words and len(" ".join(windows[t]).split()) < n_words):
                self.stats["texts_over_token_limit"] += 1
                self.stats["text_windows"] += len(windows[t])
        flat = list(dict.fromkeys(w for ws in windows.values() for w in ws))
        if not flat:
            return {}
        vecs = dict(zip(flat, self._encode(flat)))
        out = {}
        for t, ws in windows.items():
            mean = np.mean([vecs[w] for w in ws], axis=0)
            out[t] = mean / max(float(np.linalg.norm(mean)), 1e-12)
        return out

    # -- image side ----------------------------------------------------------------------------

    def embed_crops(self, crops: dict[tuple, Image.Image]) -> dict[tuple, np.ndarray]:
        """Unit-norm CLIP embeddings of the region crops, one encode call over the unique crops."""
        keys = list(crops)
        if not keys:
            return {}
        return dict(zip(keys, self._encode([crops[k] for k in keys])))

    @torch.inference_mode()
    def embed_local(self, images: dict[str, Image.Image], boxes: dict[str, list[Box]]) -> dict[tuple, np.ndarray]:
        """Region embeddings from full images via region-restricted last-layer attention.

        ``images`` maps an image key to the full image, ``boxes`` the same key to its regions' boxes;
        every unique image goes through the vision tower once, in batches of ``batch_size``.
        """
        cfg = self._vision.config
        out: dict[tuple, np.ndarray] = {}
        keys = list(images)
        for start in range(0, len(keys), self.batch_size):
            chunk = keys[start : start + self.batch_size]
            squares = [pad_to_square(images[k].convert("RGB")) for k in chunk]
            pixels = self._processor.image_processor(images=squares, return_tensors="pt")["pixel_values"]
            pixels = pixels.to(device=self._clip.device, dtype=self._clip.dtype)
            hidden = self._vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
            rows, masks, owners = [], [], []
            for i, (key, square) in enumerate(zip(chunk, squares)):
                for box in boxes[key]:
                    patch = region_patch_mask(box, square.size[0], cfg.image_size, cfg.patch_size)
                    masks.append(np.concatenate([[True], patch]))
                    rows.append(i)
                    owners.append((key, box))
            if not rows:
                continue
            mask = torch.as_tensor(np.stack(masks), device=hidden.device)
            emb = self._local_attention(hidden[torch.as_tensor(rows, device=hidden.device)], mask)
            for owner, vec in zip(owners, emb.float().cpu().numpy()):
                out[owner] = vec
        return out

    def _local_attention(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Re-run CLIP's last vision layer for the class token, attending only where ``mask`` is True."""
        layer = self._vision.encoder.layers[-1]
        attn = layer.self_attn
        n, t, d = hidden.shape
        heads, head_dim = attn.num_heads, attn.head_dim
        y = layer.layer_norm1(hidden)
        q = attn.q_proj(y[:, :1]).view(n, 1, heads, head_dim).transpose(1, 2)
        k = attn.k_proj(y).view(n, t, heads, head_dim).transpose(1, 2)
        v = attn.v_proj(y).view(n, t, heads, head_dim).transpose(1, 2)
        logits = (q @ k.transpose(-1, -2)) * attn.scale  # (n, heads, 1, t)
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        ctx = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, 1, d)
        x = hidden[:, :1] + attn.out_proj(ctx)
        x = x + layer.mlp(layer.layer_norm2(x))
        pooled = self._vision.post_layernorm(x[:, 0])
        emb = self._clip.visual_projection(pooled)
        return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def _encode(self, inputs: list) -> np.ndarray:
        return self.model.encode(  # type: ignore[attr-defined]
            inputs, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )

    # -- scoring -------------------------------------------------------------------------------

    def score_batch(self, items: Sequence[tuple[Region, str, Sequence[str]]]) -> list[SemanticScore]:
        """Score ``(region, plain description, phrase labels)`` triples (labels are not used here)."""
        images = _load_images(r.image_path for r, _, _ in items)
        crops: dict[tuple, Image.Image] = {}
        boxes: dict[str, list[Box]] = {}
        for region, _, _ in items:
            key = _region_key(region)
            if key not in crops:
                crops[key] = crop_region(images[region.image_path], region.box)
                boxes.setdefault(region.image_path, []).append(region.box)
        crop_emb = self.embed_crops(crops)
        local_emb = self.embed_local(images, boxes)
        before = self.stats["texts_over_token_limit"]
        text_emb = self.embed_texts([plain for _, plain, _ in items if plain.strip()])
        if self.stats["texts_over_token_limit"] > before:
            logger.info(
                "CLIP: %d descriptions longer than %d tokens (%s)",
                self.stats["texts_over_token_limit"] - before,
                self.max_tokens,
                "windows averaged" if self.long_text == "chunk" else "truncated",
            )
        scores = []
        for region, plain, _ in items:
            if not plain.strip():
                scores.append(SemanticScore(0.0, {"clip_crop": 0.0, "clip_local": 0.0}, self.name))
                continue
            t = text_emb[plain]
            crop = _cos(crop_emb[_region_key(region)], t)
            local = _cos(local_emb[(region.image_path, region.box)], t)
            scores.append(SemanticScore(0.5 * (crop + local), {"clip_crop": crop, "clip_local": local}, self.name))
        return scores


def _region_key(region: Region) -> tuple:
    return (region.image_path, region.box)


def _load_images(paths) -> dict[str, Image.Image]:
    out: dict[str, Image.Image] = {}
    for path in paths:
        if path in out:
            continue
        try:
            with Image.open(path) as im:
                out[path] = im.convert("RGB")
        except OSError as exc:
            raise SPRError(f"cannot read image {path} for CLIP scoring: {exc}") from exc
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(min(max(float(np.dot(a, b)), 0.0), 1.0))
