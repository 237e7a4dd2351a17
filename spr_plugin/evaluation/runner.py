"""Batched greedy decoding and a resumable per-item results file.

Evaluation must be deterministic (greedy), so two runs of the same model agree and differences
between models are not sampling noise. Prompts are batched with left padding; special tokens are
kept when decoding because Qwen's box and reference markers are special tokens.

Results are appended to a JSONL file, one flushed line per item keyed by ``id``; a rerun reads the
file and only evaluates the missing items, so an interrupted evaluation loses at most one batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from spr_plugin.core.frame import DEFAULT_IMAGE_MAX_PIXELS, DEFAULT_IMAGE_MIN_PIXELS
from spr_plugin.core.resumable import ResumableJsonl
from spr_plugin.families.prompts import Prompt
from spr_plugin.generation.model_runner import ModelRunner


def generate_greedy(
    loaded: ModelRunner,
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    *,
    image_max_pixels: int | None = DEFAULT_IMAGE_MAX_PIXELS,
    image_min_pixels: int | None = DEFAULT_IMAGE_MIN_PIXELS,
) -> list[str]:
    """One greedy answer per prompt, special tokens kept, chat end markers removed.

    Images get LLaMA-Factory's pre-resize first (``image_max_pixels``/``image_min_pixels``, None = none),
    so the model is evaluated in the frame it was trained in and answers are parsed in.
    """
    answers, _ = loaded.generate(
        prompts, max_new_tokens=max_new_tokens, image_max_pixels=image_max_pixels, image_min_pixels=image_min_pixels
    )
    return answers


def decoding_settings(config: Any) -> dict[str, Any]:
    """What a report records about decoding: greedy, length, batch and the image pre-resize it used."""
    keys = ("max_new_tokens", "batch_size", "image_max_pixels", "image_min_pixels")
    return {"do_sample": False, **{k: getattr(config, k) for k in keys}}


def run_resumable(
    ids: Sequence[str],
    make_prompt: Callable[[int], Prompt],
    score: Callable[[int, str], dict[str, Any]],
    loaded: ModelRunner,
    results_path: str | os.PathLike,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    progress: bool = True,
    desc: str = "eval",
    image_max_pixels: int | None = DEFAULT_IMAGE_MAX_PIXELS,
    image_min_pixels: int | None = DEFAULT_IMAGE_MIN_PIXELS,
) -> tuple[list[dict[str, Any]], int]:
    """Evaluate every item not yet in ``results_path``; returns all results in ``ids`` order and how many were reused.

    ``make_prompt(i)`` builds item i's prompt; ``score(i, answer)`` turns its answer into a result dict
    (the ``id`` field is added here). ``image_max_pixels``/``image_min_pixels`` go to :func:`generate_greedy`.
    """
    from tqdm.auto import tqdm

    results = ResumableJsonl(results_path, lambda r: str(r["id"]), lambda d: d, what="result")
    done = results.done
    todo = [i for i, item_id in enumerate(ids) if item_id not in done]
    bar = tqdm(total=len(ids), initial=len(ids) - len(todo), desc=desc, unit="item", disable=not progress)
    with results as out:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            prompts = [make_prompt(i) for i in chunk]
            answers = generate_greedy(
                loaded, prompts, max_new_tokens, image_max_pixels=image_max_pixels, image_min_pixels=image_min_pixels
            )
            for i, answer in zip(chunk, answers):
                rec = {"id": ids[i], **score(i, answer)}
                out.write(rec, rec)
            bar.update(len(chunk))
    bar.close()
    return [done[item_id] for item_id in ids], len(ids) - len(todo)
