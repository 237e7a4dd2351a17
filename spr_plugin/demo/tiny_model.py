"""Build a tiny, random, fully offline Qwen2-VL checkpoint.

Why: the SPR pipeline (generate grounded descriptions -> score -> DPO through LLaMA-Factory) has to
be exercised in tests and demos on a CPU machine with no access to the Hugging Face Hub. The real
Qwen2-VL tokenizer/processor/config cannot be downloaded, so we build a structurally identical
miniature: same architecture class, same special tokens, same chat template, same processor
classes, but a ~few-hundred-token vocabulary and a hidden size of 64. LLaMA-Factory's ``qwen2_vl``
template and mm-plugin accept it unchanged.

Tokenizer note: transformers 5 re-creates ``Qwen2Tokenizer`` (``Qwen2TokenizerFast`` is an alias)
from the vocab/merges in ``tokenizer.json`` and *re-installs Qwen's own pre-tokenizer*, which
splits every digit into its own pre-token. Multi-digit number tokens ("123") would therefore be
unreachable after a save/load round trip, so we train the BPE with exactly Qwen's pipeline and
numbers are spelled digit by digit -- just as the real Qwen2-VL does.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from spr_plugin.core.jsonl import atomic_write_text
from spr_plugin.core.options import DEFAULT_BOX_FORMAT
from spr_plugin.families.profiles import get_profile

if TYPE_CHECKING:
    from transformers import Qwen2TokenizerFast

#: Qwen2 special tokens in Qwen's own order; ``<|endoftext|>`` is pad, ``<|im_end|>`` is eos.
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    *get_profile(DEFAULT_BOX_FORMAT).grounding_tokens,
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: Qwen2-VL-Instruct's chat template (ChatML, images as vision_start/image_pad/vision_end).
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Text the demo prompts/answers use, so common words become single tokens.
BASE_CORPUS: tuple[str, ...] = (
    "system",
    "user",
    "assistant",
    "You are a helpful assistant.",
    "Describe the region in detail. Ground every object you mention with a bounding box.",
    "Describe the region (12,345),(678,901) in detail.",
    "The region shows a red circle, a blue square and a green triangle next to a yellow star.",
    "The image shows objects and shapes. There is a purple square above an orange circle.",
    "A shape left of another shape, right of the object, below the object.",
)

# The synthetic-scene vocabulary (a superset of spr_plugin.demo.scenes.COLOURS/SHAPES): the tiny model's
# tokenizer is trained on a vocabulary of its own (a wider one than the demo renders).
_SCENE_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "brown", "pink")
_SCENE_SHAPES = ("circle", "square", "triangle", "star", "rectangle", "diamond", "hexagon")

#: Bump when the build recipe changes so stale cached models are rebuilt.
_BUILD_VERSION = 1
_MARKER = "spr_tiny_model.json"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

# Image budget: 4..16 merged 28x28 patches keeps vision sequences (and CPU time) tiny.
MIN_PIXELS = 28 * 28 * 4
MAX_PIXELS = 28 * 28 * 16


def _corpus_lines(extra: Iterable[str]) -> list[str]:
    """Built-in corpus + scene vocabulary + numbers 0..999 + caller text, repeated 3x.

    Repetition lets words seen once reach the trainer's ``min_frequency``. The numbers only
    contribute their digits: Qwen's pre-tokenizer isolates every digit (see module docstring).
    """
    names = [f"{c} {s}" for c in _SCENE_COLOURS for s in _SCENE_SHAPES]
    # Names appear both after a space and right after the reference token (no space): train both.
    lines = list(BASE_CORPUS) + names + [f"The region shows a {n}, {n} and {n} next to {n}" for n in names]
    lines += [" ".join(str(n) for n in range(start, start + 50)) for start in range(0, 1000, 50)]
    return (lines + list(extra)) * 3


def _train_tokenizer(
    lines: list[str],
    vocab_size: int,
    special_tokens: tuple[str, ...] = QWEN_SPECIAL_TOKENS,
    chat_template: str = QWEN2VL_CHAT_TEMPLATE,
    named_tokens: dict[str, str] | None = None,
) -> Qwen2TokenizerFast:
    """Train a byte-level BPE with Qwen2's exact normalizer/pre-tokenizer and wrap it.

    ``special_tokens`` start with pad (``<|endoftext|>``) and include eos (``<|im_end|>``); ``named_tokens`` become
    named special tokens of the tokenizer (InternVL's processor reads ``tokenizer.start_image_token`` and the like).
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import Qwen2TokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    return Qwen2TokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens=named_tokens or [t for t in special_tokens if t not in ("<|endoftext|>", "<|im_end|>")],
        model_max_length=32768,
        chat_template=chat_template,
    )


def atomic_build(
    out_dir: str | Path, digest: str, write: Callable[[Path], None], marker: dict[str, object] | None = None
) -> Path:
    """Run ``write(tmp)`` in a sibling temp dir and move it to ``out_dir`` with a marker holding ``digest`` (and
    ``marker``'s fields).

    A finished build with the same digest is reused as it is; a folder that is not a build is never overwritten;
    an interrupted build never looks complete. Builders of one folder take turns (a lock file beside it), so two
    processes asking for the same model at once (the effect study's parallel tasks) build it once instead of one
    removing the folder the other is moving into place.
    """
    from filelock import FileLock

    out = Path(out_dir)
    if is_complete(out, digest):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f".{out.name}.lock")):
        if is_complete(out, digest):  # built by another process while this one waited
            return out
        if out.exists() and any(out.iterdir()) and not (out / _MARKER).exists():
            raise FileExistsError(f"{out} is not empty and is not a tiny-model build; refusing to overwrite it")
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            write(tmp)
            (tmp / _MARKER).write_text(json.dumps({"hash": digest, **(marker or {}), "build_version": _BUILD_VERSION}))
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def _args_hash(seed: int, corpus: list[str], hidden_size: int, num_layers: int, family: str = "qwen2_vl") -> str:
    payload = {"v": _BUILD_VERSION, "seed": seed, "corpus": corpus, "hidden": hidden_size, "layers": num_layers}
    if family != "qwen2_vl":  # the Qwen2-VL digest stays what it was (cached builds are reused)
        payload["family"] = family
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def is_complete(out_dir: str | Path, args_hash: str | None = None) -> bool:
    """True if ``out_dir`` holds a finished build (optionally of the given argument hash)."""
    out = Path(out_dir)
    marker = out / _MARKER
    if not marker.is_file() or not all((out / f).is_file() for f in _REQUIRED_FILES):
        return False
    return args_hash is None or json.loads(marker.read_text()).get("hash") == args_hash


def build_tiny_qwen2vl(
    out_dir: str | Path,
    *,
    seed: int = 0,
    corpus: Iterable[str] = (),
    hidden_size: int = 64,
    num_layers: int = 2,
) -> Path:
    """Build (or reuse) a tiny random Qwen2-VL checkpoint in ``out_dir`` and return its path.

    The directory loads with ``AutoProcessor`` / ``AutoModelForImageTextToText`` and with
    LLaMA-Factory's ``template: qwen2_vl``. The build is deterministic for ``seed`` and the
    arguments; a marker file holding a hash of them makes repeated calls free (the model is
    reused when the hash matches, rebuilt otherwise). The build happens in a sibling temp dir and
    is moved into place at the end, so an interrupted build never looks complete.
    ``corpus`` adds caller text to the tokenizer training data (e.g. category names).
    ``hidden_size`` must be a multiple of 16 (4 heads, head_dim split 1:1.5:1.5 for M-RoPE).
    """
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    if hidden_size % 16:
        raise ValueError("hidden_size must be a multiple of 16")
    out = Path(out_dir)
    extra = list(corpus)
    digest = _args_hash(seed, extra, hidden_size, num_layers)

    def write(tmp: Path) -> None:
        tokenizer = _train_tokenizer(_corpus_lines(extra), vocab_size=1024)
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
        heads = 4
        head_dim = hidden_size // heads
        # M-RoPE splits head_dim/2 rotary frequencies over (time, height, width).
        t_sec = head_dim // 2 // 4
        h_sec = (head_dim // 2 - t_sec) // 2
        mrope_section = [t_sec, h_sec, head_dim // 2 - t_sec - h_sec]
        config = Qwen2VLConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": hidden_size,
                "intermediate_size": hidden_size * 2,
                "num_hidden_layers": num_layers,
                "num_attention_heads": heads,
                "num_key_value_heads": 2,
                "max_position_embeddings": 4096,
                "rope_scaling": {"type": "mrope", "mrope_section": mrope_section, "rope_theta": 10000.0},
                "tie_word_embeddings": True,
                "bos_token_id": ids["<|endoftext|>"],
                "eos_token_id": ids["<|im_end|>"],
                "pad_token_id": ids["<|endoftext|>"],
            },
            vision_config={
                "depth": 2,
                "embed_dim": 32,
                "hidden_size": hidden_size,  # merger output feeds the LM directly
                "num_heads": 2,
                "mlp_ratio": 2,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
            },
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=True,
        )
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config).to(torch.float32).eval()
        model.generation_config = GenerationConfig(
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            bos_token_id=ids["<|endoftext|>"],
        )
        model.save_pretrained(tmp)
        processor = Qwen2VLProcessor(
            image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
            tokenizer=tokenizer,
            # transformers 5 refuses to build/load a Qwen2VLProcessor without its video processor.
            video_processor=Qwen2VLVideoProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
            chat_template=QWEN2VL_CHAT_TEMPLATE,
        )
        processor.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return atomic_build(out, digest, write, marker={"seed": seed})


def set_image_budget(model_dir: str | Path, max_pixels: int) -> None:
    """Set the processor's pixel cap of a built tiny model so images become ``max_pixels / 784`` merged tokens at most.

    Why: the default budget (``MAX_PIXELS``, 16 tokens) keeps tests fast; studies that need a finer
    view (bench/effect_study.py) raise it. Image and video processors are changed together, in place.
    """
    path = Path(model_dir) / "processor_config.json"
    data = json.loads(path.read_text())
    for key in ("image_processor", "video_processor"):
        if key in data:
            data[key]["size"]["longest_edge"] = max_pixels
    write_if_changed(path, json.dumps(data, indent=2))


def write_if_changed(path: Path, text: str) -> None:
    """Replace ``path``'s text atomically, and only if it changes: a process loading the same model folder (the effect
    study's parallel tasks share one init) never reads a half-written or rewritten file."""
    if path.is_file() and path.read_text() == text:
        return
    atomic_write_text(path, text)
