"""Tiny random Qwen3-VL, GLM-4.1V and InternVL checkpoints, built locally in seconds (no hub), like the tiny Qwen2-VL.

Why: each model family spr-plugin supports must be exercised end to end on CPU (generation, LLaMA-Factory's
template and multimodal plugin, DPO training, evaluation) with the family's real architecture class, processor
class and special tokens; only the sizes are tiny and the weights random. The tokenizer is the same trained
byte-level BPE as :mod:`spr_plugin.demo.tiny_model` (Qwen2's pre-tokenizer; both families use a Qwen
tokenizer), with the family's own special tokens and a chat template of the family's shape:

* Qwen3-VL: ChatML without a default system turn, images as ``<|vision_start|><|image_pad|><|vision_end|>``;
  vision patch 16 with merge 2, so the processor works in 32-pixel multiples; interleaved M-RoPE, DeepStack.
* GLM-4.1V (``Glm4vForConditionalGeneration``, ``Glm4vProcessor``): GLM's ``[gMASK]<sop><|user|>...<|assistant|>``
  chat, images as ``<|begin_of_image|><|image|><|end_of_image|>``, patch 14 with merge 2, partial rotary M-RoPE; its
  box markers ``<|begin_of_box|> <|end_of_box|>`` are special tokens.
* InternVL (the ``-hf`` layout transformers loads): ChatML with InternVL's default system turn (the one
  LLaMA-Factory's ``intern_vl`` template writes), images as ``<IMG_CONTEXT>`` that the processor expands to
  ``<img><IMG_CONTEXT>*n</img>``; one 56-pixel tile of 14-pixel patches, pixel-shuffled to 4 tokens. Its
  grounding tags ``<ref> </ref> <box> </box>`` are added tokens, as in the released tokenizers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from spr_plugin.demo.tiny_model import (
    _args_hash,
    _corpus_lines,
    _train_tokenizer,
    atomic_build,
    build_tiny_qwen2vl,
)
from spr_plugin.families.profiles import GLM4V_GROUNDING_TOKENS, INTERNVL_GROUNDING_TOKENS, QWEN_GROUNDING_TOKENS

#: Qwen3-VL's special tokens (Qwen2-VL's set; Qwen3's ``<think>`` tags are ordinary added text, not needed here).
QWEN3VL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    *QWEN_GROUNDING_TOKENS,
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: Qwen3-VL-Instruct's chat template, reduced to what SPR sends (no tools): no default system turn.
QWEN3VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: InternVL's image tags, named as its processor reads them from the tokenizer.
INTERNVL_IMAGE_TOKENS: dict[str, str] = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
INTERNVL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    *INTERNVL_IMAGE_TOKENS.values(),
    "<quad>",
    "</quad>",
    *INTERNVL_GROUNDING_TOKENS,
)
#: The default system turn of InternVL's chat (and of LLaMA-Factory's ``intern_vl`` template).
INTERNVL_SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
INTERNVL_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + INTERNVL_SYSTEM + "<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<IMG_CONTEXT>\n{% elif content['type'] == 'video' %}<video>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Image budgets: Qwen3-VL 4..16 merged 32x32 patches; InternVL one 56x56 tile (16 patches -> 4 tokens).
QWEN3VL_MIN_PIXELS = 32 * 32 * 4
QWEN3VL_MAX_PIXELS = 32 * 32 * 16
INTERNVL_TILE = 56


def build_tiny_qwen3vl(
    out_dir: str | Path, *, seed: int = 0, corpus: Iterable[str] = (), hidden_size: int = 64, num_layers: int = 2
) -> Path:
    """Build (or reuse) a tiny random Qwen3-VL checkpoint in ``out_dir`` (``AutoProcessor`` /
    ``AutoModelForImageTextToText``, LLaMA-Factory's ``qwen3_vl`` / ``qwen3_vl_nothink`` templates)."""
    extra = list(corpus)
    digest = _args_hash(seed, extra, hidden_size, num_layers, family="qwen3_vl")

    def write(tmp: Path) -> None:
        import torch
        from transformers import (
            GenerationConfig,
            Qwen2VLImageProcessor,
            Qwen3VLConfig,
            Qwen3VLForConditionalGeneration,
            Qwen3VLProcessor,
            Qwen3VLVideoProcessor,
        )

        tokenizer = _train_tokenizer(_corpus_lines(extra), 1024, QWEN3VL_SPECIAL_TOKENS, QWEN3VL_CHAT_TEMPLATE)
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN3VL_SPECIAL_TOKENS}
        heads, head_dim = 4, hidden_size // 4
        half = head_dim // 2  # interleaved M-RoPE: (t, h, w) sections of the rotary half
        config = Qwen3VLConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": hidden_size,
                "intermediate_size": hidden_size * 2,
                "num_hidden_layers": num_layers,
                "num_attention_heads": heads,
                "num_key_value_heads": 2,
                "head_dim": head_dim,
                "max_position_embeddings": 4096,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": 10000.0,
                    "mrope_section": [half - 2 * (half // 3), half // 3, half // 3],
                    "mrope_interleaved": True,
                },
                "bos_token_id": ids["<|endoftext|>"],
                "eos_token_id": ids["<|im_end|>"],
                "pad_token_id": ids["<|endoftext|>"],
            },
            vision_config={
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "out_hidden_size": hidden_size,
                "patch_size": 16,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "num_position_embeddings": 64,
                "deepstack_visual_indexes": [0],
            },
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=True,
        )
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config).to(torch.float32).eval()
        model.generation_config = GenerationConfig(
            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"]
        )
        model.save_pretrained(tmp)
        sizes = {"min_pixels": QWEN3VL_MIN_PIXELS, "max_pixels": QWEN3VL_MAX_PIXELS, "patch_size": 16, "merge_size": 2}
        Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessor(**sizes, image_mean=[0.5] * 3, image_std=[0.5] * 3),
            tokenizer=tokenizer,
            video_processor=Qwen3VLVideoProcessor(**sizes),
            chat_template=QWEN3VL_CHAT_TEMPLATE,
        ).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return atomic_build(out_dir, digest, write)


def build_tiny_internvl(
    out_dir: str | Path, *, seed: int = 0, corpus: Iterable[str] = (), hidden_size: int = 64, num_layers: int = 2
) -> Path:
    """Build (or reuse) a tiny random InternVL (``-hf`` layout: ``InternVLForConditionalGeneration`` with a Qwen2
    language model, ``InternVLProcessor``) in ``out_dir``; LLaMA-Factory's ``intern_vl`` template trains it."""
    extra = list(corpus)
    digest = _args_hash(seed, extra, hidden_size, num_layers, family="internvl")

    def write(tmp: Path) -> None:
        import torch
        from transformers import (
            GenerationConfig,
            GotOcr2ImageProcessor,
            InternVLConfig,
            InternVLForConditionalGeneration,
            InternVLProcessor,
            InternVLVideoProcessor,
        )

        tokenizer = _train_tokenizer(
            _corpus_lines(extra), 1024, INTERNVL_SPECIAL_TOKENS, INTERNVL_CHAT_TEMPLATE, named_tokens=INTERNVL_IMAGE_TOKENS
        )
        extra_tokens = [t for t in INTERNVL_SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")]
        tokenizer.add_special_tokens({"additional_special_tokens": extra_tokens})
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in INTERNVL_SPECIAL_TOKENS}
        patch = 14
        seq = (INTERNVL_TILE // patch) ** 2 // 4  # pixel shuffle with downsample ratio 0.5
        config = InternVLConfig(
            vision_config={
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "image_size": [INTERNVL_TILE, INTERNVL_TILE],
                "patch_size": [patch, patch],
            },
            text_config={
                "model_type": "qwen2",
                "vocab_size": len(tokenizer),
                "hidden_size": hidden_size,
                "intermediate_size": hidden_size * 2,
                "num_hidden_layers": num_layers,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 4096,
                "tie_word_embeddings": True,
                "bos_token_id": ids["<|endoftext|>"],
                "eos_token_id": ids["<|im_end|>"],
                "pad_token_id": ids["<|endoftext|>"],
            },
            image_token_id=ids["<IMG_CONTEXT>"],
            image_seq_length=seq,
            downsample_ratio=0.5,
            tie_word_embeddings=True,
        )
        torch.manual_seed(seed)
        model = InternVLForConditionalGeneration(config).to(torch.float32).eval()
        model.generation_config = GenerationConfig(
            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"]
        )
        model.save_pretrained(tmp)
        size = {"height": INTERNVL_TILE, "width": INTERNVL_TILE}
        InternVLProcessor(
            image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=False),
            tokenizer=tokenizer,
            video_processor=InternVLVideoProcessor(size=size),
            image_seq_length=seq,
            chat_template=INTERNVL_CHAT_TEMPLATE,
        ).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return atomic_build(out_dir, digest, write)


#: GLM-4.1V's special tokens (pad first, as the tokenizer trainer expects; ``<|endoftext|>`` is GLM's eos too).
GLM4V_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "[gMASK]",
    "<sop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|image|>",
    "<|video|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    *GLM4V_GROUNDING_TOKENS,
)
#: GLM-4.1V's chat, reduced to what SPR sends (LLaMA-Factory's ``glm4v`` template writes the same turns).
GLM4V_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tiny_glm4v(
    out_dir: str | Path, *, seed: int = 0, corpus: Iterable[str] = (), hidden_size: int = 64, num_layers: int = 2
) -> Path:
    """Build (or reuse) a tiny random GLM-4.1V in ``out_dir``; LLaMA-Factory's ``glm4v`` template trains it."""
    extra = list(corpus)
    digest = _args_hash(seed, extra, hidden_size, num_layers, family="glm4v")

    def write(tmp: Path) -> None:
        import torch
        from transformers import (
            GenerationConfig,
            Glm4vConfig,
            Glm4vForConditionalGeneration,
            Glm4vImageProcessor,
            Glm4vProcessor,
            Glm4vVideoProcessor,
        )

        tokenizer = _train_tokenizer(_corpus_lines(extra), 1024, GLM4V_SPECIAL_TOKENS, GLM4V_CHAT_TEMPLATE)
        tokenizer.eos_token = "<|endoftext|>"
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in GLM4V_SPECIAL_TOKENS}
        heads = 4
        rotary_half = hidden_size // heads // 4  # partial_rotary_factor 0.5 of head_dim, halved for (cos, sin)
        eos = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
        config = Glm4vConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": hidden_size,
                "intermediate_size": hidden_size * 2,
                "num_hidden_layers": num_layers,
                "num_attention_heads": heads,
                "num_key_value_heads": 2,
                "max_position_embeddings": 4096,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": 10000.0,
                    "partial_rotary_factor": 0.5,
                    "mrope_section": [rotary_half - 2 * (rotary_half // 4), rotary_half // 4, rotary_half // 4],
                },
                "eos_token_id": eos,
                "pad_token_id": ids["<|endoftext|>"],
            },
            vision_config={
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "out_hidden_size": hidden_size,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "image_size": 56,
            },
            image_token_id=ids["<|image|>"],
            video_token_id=ids["<|video|>"],
            image_start_token_id=ids["<|begin_of_image|>"],
            image_end_token_id=ids["<|end_of_image|>"],
            video_start_token_id=ids["<|begin_of_video|>"],
            video_end_token_id=ids["<|end_of_video|>"],
            tie_word_embeddings=True,
        )
        torch.manual_seed(seed)
        model = Glm4vForConditionalGeneration(config).to(torch.float32).eval()
        model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=ids["<|endoftext|>"])
        model.save_pretrained(tmp)
        size = {"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 16}
        Glm4vProcessor(
            image_processor=Glm4vImageProcessor(size=size),
            tokenizer=tokenizer,
            video_processor=Glm4vVideoProcessor(),
            chat_template=GLM4V_CHAT_TEMPLATE,
        ).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return atomic_build(out_dir, digest, write)


#: The tiny checkpoint builder of each family a ``--box-format`` names (the Qwen2.5-VL formats use Qwen2-VL's).
TINY_BUILDERS: dict[str, Callable[..., Path]] = {
    "qwen2_vl": build_tiny_qwen2vl,
    "qwen3_vl": build_tiny_qwen3vl,
    "internvl": build_tiny_internvl,
    "glm4v": build_tiny_glm4v,
}
