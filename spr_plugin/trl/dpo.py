"""The glue with which TRL's own ``DPOTrainer`` and ``GRPOTrainer`` train Qwen2-VL on the pinned stack.

Pinned here: trl 0.24.0 with transformers 5.6.0 (LLaMA-Factory 0.9.5's upper bounds). TRL 0.24 was written
for transformers 4.x, and five things break for Qwen2-VL; each fix below is as narrow as the fault:

1. ``from trl import DPOTrainer`` fails with ``No module named 'mergekit'``. ``trl.import_utils`` stores
   ``transformers.utils.import_utils._is_package_available(name)`` as its availability flags; transformers 5
   returns an ``(available, version)`` tuple there even without ``return_version``, and a tuple is truthy, so
   TRL believes every optional package (mergekit, deepspeed, ...) is installed and imports it.
   :func:`import_trl` turns the tuples in ``trl.import_utils`` into the booleans TRL meant. Only TRL's own
   flags change; transformers is left alone (LLaMA-Factory instead replaces transformers' function for the
   whole process when it is imported, which also cures TRL, so the two compose).
2. transformers 5.1 dropped ``PreTrainedModel.warnings_issued``; the trainers' ``__init__`` writes into it.
   The trainers below give the model instance an empty dict when it has none.
3. DPO: ``DPOTrainer.process_row`` keeps ``pixel_values[0]``, which for Qwen2-VL (whose processor returns the
   patches of all images as one 2-D tensor) is one patch row, and drops ``image_grid_thw``; the collator pads
   patches as if they were per-sample tensors and the forward pass never passes the grid.
   :class:`Qwen2VLDPOTrainer` keeps all patches and the grid per row, its collator concatenates them over the
   batch (the layout the model expects), and its forward passes the grid of the chosen + rejected batch.
4. DPO and GRPO: transformers 5 Qwen2-VL refuses ``image_grid_thw`` without ``mm_token_type_ids`` (needed for
   M-RoPE), and TRL 0.24 never forwards them (GRPO even crashes on the processor's prompt-length copy). They are
   a function of the input ids (image pad -> 1, video pad -> 2), so the model call is wrapped to compute them from
   the ids the model actually receives, after TRL's own padding, flushing and truncation. For that (and for the
   model's own placeholder count) answers must hold no media token: DPO rows with one are refused, and GRPO's
   generation never samples one.
5. The image frame: LLaMA-Factory pre-resizes every image to ``image_max_pixels`` / ``image_min_pixels`` before
   the processor, and SPR's boxes (for Qwen2.5-VL: pixels of that frame) were written for it. The parquets of
   ``spr export-hf`` / ``spr export-grpo`` record the frame per row; both trainers apply the same pre-resize
   (:func:`spr_plugin.core.frame.lf_preprocess_image`) so TRL shows the model what LLaMA-Factory would.

Newer TRL releases fix 3 and 4 upstream (huggingface/trl#3906, #5279); the subclasses override only the
methods named above and call TRL's own code for everything else. See docs/trl.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from spr_plugin.core.errors import SPRError

#: Dataset columns the parquets of ``spr export-hf`` / ``spr export-grpo`` carry next to TRL's own columns.
FRAME_COLUMNS = ("image_max_pixels", "image_min_pixels")


def import_trl():
    """``trl`` with its optional-package flags corrected (fault 1 in the module docstring); returns the module."""
    flags = importlib.import_module("trl.import_utils")
    for name, value in list(vars(flags).items()):
        if name.startswith("_") and name.endswith("_available") and isinstance(value, tuple):
            setattr(flags, name, bool(value[0]))
    return importlib.import_module("trl")


def ensure_warnings_issued(model: Any) -> None:
    """Fault 2: TRL 0.24 trainers write ``model.warnings_issued[...]``, an attribute transformers 5.1 removed."""
    target = getattr(model, "get_base_model", lambda: model)()
    if not isinstance(getattr(target, "warnings_issued", None), dict):
        target.warnings_issued = {}


def preprocess_images(images: Sequence[Any], max_pixels: int | None, min_pixels: int | None) -> list[Any]:
    """Fault 5: LLaMA-Factory's pre-resize of each image (RGB), so TRL shows the frame the boxes were written for."""
    from spr_plugin.core.frame import lf_preprocess_image

    return [lf_preprocess_image(im, max_pixels, min_pixels) for im in images]


def _frame(row: dict[str, Any]) -> tuple[int | None, int | None]:
    missing = [c for c in FRAME_COLUMNS if c not in row]
    if missing:
        raise SPRError(
            f"dataset row has no {', '.join(missing)} column: write it with spr export-hf / spr export-grpo, "
            "which record the image frame the boxes were written for"
        )
    return row["image_max_pixels"], row["image_min_pixels"]


class _MRoPEInputs:
    """A stand-in for the model in TRL's forward helpers that adds what Qwen2-VL needs (faults 3 and 4).

    TRL calls ``model(input_ids, **kwargs)`` inside long methods that build the final ids (padding, flushing,
    truncation); wrapping the callable lets those methods run unchanged and computes ``mm_token_type_ids`` from
    exactly the ids the model receives. ``image_grid_thw`` is added when TRL's method cannot pass it.
    """

    def __init__(self, model: Any, image_token_id: int, video_token_id: int | None, image_grid_thw: Any = None) -> None:
        self.model = model
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        self.image_grid_thw = image_grid_thw

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.image_grid_thw is not None and "image_grid_thw" not in kwargs:
            kwargs["image_grid_thw"] = self.image_grid_thw
        input_ids = args[0] if args else kwargs.get("input_ids")
        if input_ids is not None and kwargs.get("image_grid_thw") is not None:
            types = (input_ids == self.image_token_id).long()
            if self.video_token_id is not None:
                types = types + 2 * (input_ids == self.video_token_id).long()
            kwargs["mm_token_type_ids"] = types
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # anything else TRL asks of the model
        return getattr(self.model, name)


def _load(model: Any) -> Any:
    """A model path becomes the model (the trainers must set attributes on it before TRL's ``__init__``)."""
    if isinstance(model, str):
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(model)
    return model


def _token_ids(model: Any) -> tuple[int, int | None]:
    config = model.config
    image = getattr(config, "image_token_id", None)
    if image is None:
        raise SPRError(f"{type(model).__name__} has no image_token_id in its config; these trainers are for Qwen2-VL models")
    return int(image), getattr(config, "video_token_id", None)


@dataclass(frozen=True)
class Qwen2VLPreferenceCollator:
    """TRL's preference collator, with Qwen2-VL's flat patches and grids concatenated over the batch (fault 3)."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import numpy as np
        import torch
        from trl.trainer.dpo_trainer import DataCollatorForPreference

        keys = ("pixel_values", "image_grid_thw")
        vision = [{k: ex[k] for k in keys} for ex in examples]
        rest = [{k: v for k, v in ex.items() if k not in keys} for ex in examples]
        batch = DataCollatorForPreference(pad_token_id=self.pad_token_id)(rest)
        # rows come back from the arrow table as nested lists; numpy converts those far faster than torch does
        batch["pixel_values"] = torch.from_numpy(np.concatenate([np.asarray(v["pixel_values"], np.float32) for v in vision]))
        batch["image_grid_thw"] = torch.from_numpy(np.concatenate([np.asarray(v["image_grid_thw"], np.int64) for v in vision]))
        return batch


def _dpo_class():  # noqa: C901 (the subclass is defined here to import trl lazily)
    trl = import_trl()

    class Qwen2VLDPOTrainer(trl.DPOTrainer):
        """``trl.DPOTrainer`` for Qwen2-VL on trl 0.24 + transformers 5 (see the module docstring)."""

        def __init__(self, model: Any, *args: Any, data_collator: Any = None, **kwargs: Any) -> None:
            config = kwargs.get("args") or (args[1] if len(args) > 1 else None)
            if config is not None and getattr(config, "padding_free", False):
                raise SPRError("padding_free is not supported for Qwen2-VL here: M-RoPE positions need the padded batch")
            model = _load(model)
            ensure_warnings_issued(model)
            self._image_token_id, self._video_token_id = _token_ids(model)
            super().__init__(model, *args, data_collator=data_collator, **kwargs)
            if data_collator is None:
                self.data_collator = Qwen2VLPreferenceCollator(self.pad_token_id)
            self._check_truncation(self.train_dataset)

        def _check_truncation(self, dataset: Any) -> None:
            """TRL's default ``truncation_mode="keep_end"`` cuts a sequence over ``max_length`` at its start, where
            the image tokens are; the forward pass would then fail on a patch/token mismatch. Refuse up front."""
            if self.max_length is None or self.truncation_mode != "keep_end" or not hasattr(dataset, "column_names"):
                return
            prompt, chosen, rejected = (dataset[c] for c in ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids"))
            longest = max((len(p) + max(len(c), len(r)) for p, c, r in zip(prompt, chosen, rejected)), default=0)
            if longest > self.max_length:
                raise SPRError(
                    f"a prompt + answer has {longest} tokens but max_length is {self.max_length}, and truncation_mode "
                    "'keep_end' would cut the image tokens; set max_length=None, raise it, or use truncation_mode='keep_start'"
                )

        @staticmethod
        def process_row(features, processing_class, max_prompt_length=None, max_completion_length=None, add_special_tokens=True):
            images = preprocess_images(features["images"], *_frame(features))
            processed = processing_class(images=images, text=features["prompt"], add_special_tokens=False)
            tokenizer = processing_class.tokenizer
            prompt_ids = list(processed["input_ids"][0])
            if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
                # TRL would cut the prompt's start, image tokens included, and the model would then fail on a
                # patch/token count mismatch deep inside the forward pass.
                raise SPRError(
                    f"a prompt has {len(prompt_ids)} tokens (image tokens included) but max_prompt_length is "
                    f"{max_prompt_length}; raise max_prompt_length (or None) or lower image_max_pixels"
                )
            eos = [tokenizer.eos_token_id]
            chosen = tokenizer(features["chosen"], add_special_tokens=False)["input_ids"] + eos
            rejected = tokenizer(features["rejected"], add_special_tokens=False)["input_ids"] + eos
            media = {processing_class.image_token_id, getattr(processing_class, "video_token_id", None)} - {None}
            if media & set(chosen + rejected):
                # Qwen2-VL would count it as an image placeholder and fail on a feature/token mismatch.
                raise SPRError("an answer contains an image or video token; strip media markers from answers (spr export does)")
            if max_completion_length is not None:
                chosen, rejected = chosen[:max_completion_length], rejected[:max_completion_length]
            return {
                "prompt_input_ids": prompt_ids,
                "pixel_values": processed["pixel_values"],
                "image_grid_thw": processed["image_grid_thw"],
                "chosen_input_ids": chosen,
                "rejected_input_ids": rejected,
            }

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            for column in ("pixel_values", "image_grid_thw"):
                if column not in self._signature_columns:
                    self._signature_columns.append(column)

        def concatenated_forward(self, model, batch, is_ref_model=False):
            grid = batch["image_grid_thw"]
            # TRL concatenates chosen and rejected rows (patches included); the grid must follow the same order.
            wrapped = _MRoPEInputs(model, self._image_token_id, self._video_token_id, image_grid_thw=grid.repeat(2, 1))
            return super().concatenated_forward(wrapped, batch, is_ref_model)

    return Qwen2VLDPOTrainer


def _grpo_class():
    trl = import_trl()

    class Qwen2VLGRPOTrainer(trl.GRPOTrainer):
        """``trl.GRPOTrainer`` for Qwen2-VL on trl 0.24 + transformers 5 (see the module docstring)."""

        def __init__(self, model: Any, *args: Any, **kwargs: Any) -> None:
            model = _load(model)
            ensure_warnings_issued(model)
            self._image_token_id, self._video_token_id = _token_ids(model)
            super().__init__(model, *args, **kwargs)
            self._suppress_media_tokens()

        def _suppress_media_tokens(self) -> None:
            """A sampled ``<|image_pad|>`` / ``<|video_pad|>`` would count as an image placeholder in the training
            forward pass and fail it on a feature/token mismatch, so transformers generation never samples them
            (vLLM generation is not covered)."""
            config = getattr(self, "generation_config", None)
            if config is not None:
                media = [i for i in (self._image_token_id, self._video_token_id) if i is not None]
                config.suppress_tokens = sorted({*(config.suppress_tokens or []), *media})

        def _generate_and_score_completions(self, inputs):
            rows = []
            for row in inputs:  # trl reads an ``images`` list or a single ``image`` column
                if row.get("images") is not None:
                    row = {**row, "images": preprocess_images(row["images"], *_frame(row))}
                elif row.get("image") is not None:
                    row = {**row, "image": preprocess_images([row["image"]], *_frame(row))[0]}
                rows.append(row)
            return super()._generate_and_score_completions(rows)

        def _get_per_token_logps_and_entropies(self, model, input_ids, *args, mm_token_type_ids=None, **kwargs):
            # The processor's mm_token_type_ids cover the prompt only (padded on the processor's side); they are
            # recomputed over prompt + completion (answers hold no media tokens: see _suppress_media_tokens).
            wrapped = _MRoPEInputs(model, self._image_token_id, self._video_token_id)
            return super()._get_per_token_logps_and_entropies(wrapped, input_ids, *args, **kwargs)

    return Qwen2VLGRPOTrainer


def __getattr__(name: str) -> Any:
    """``Qwen2VLDPOTrainer`` / ``Qwen2VLGRPOTrainer`` are built on first use: importing this module imports no TRL."""
    if name == "Qwen2VLDPOTrainer":
        cls = _dpo_class()
    elif name == "Qwen2VLGRPOTrainer":
        cls = _grpo_class()
    else:
        raise AttributeError(name)
    globals()[name] = cls
    return cls
