"""LoRA DPO of Qwen2-VL with TRL's own DPOTrainer on the parquet `spr export-hf` writes (docs/trl.md).

    spr export-hf --dataset-dir data --name spr_qwen2vl --out hf
    python recipes/trl_dpo_qwen2vl.py --model Qwen/Qwen2-VL-7B-Instruct --data hf/spr_qwen2vl.parquet \
        --output-dir saves/qwen2vl-7b/lora/spr_trl_dpo --bf16

The defaults mirror recipes/spr_qwen2vl.yaml (LLaMA-Factory's road): LoRA rank 8 on the language model's linear
layers (vision tower and projector frozen), beta 0.1, sigmoid loss, learning rate 5e-6, cosine schedule, batch 1
x 8 accumulation. trl 0.24 + transformers 5.6 need spr_plugin.trl.dpo's Qwen2VLDPOTrainer; it also applies
the image frame the parquet records (image_max_pixels / image_min_pixels), as LLaMA-Factory does.
"""

from __future__ import annotations

import argparse

#: LoRA on the language model only (LLaMA-Factory's ``lora_target: all`` with ``freeze_vision_tower: true``).
LANGUAGE_MODEL_LINEAR = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="Qwen2-VL checkpoint (hub id or local folder)")
    p.add_argument("--data", required=True, help="parquet of spr export-hf")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after N optimizer steps (-1: run the epochs)")
    p.add_argument("--learning-rate", type=float, default=5e-6)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--grad-accum", type=int, default=8)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--beta", type=float, default=0.1)
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

    from spr_plugin.trl.dpo import Qwen2VLDPOTrainer, import_trl

    trl = import_trl()
    train = datasets.load_dataset("parquet", data_files=a.data, split="train")
    model = AutoModelForImageTextToText.from_pretrained(a.model, dtype=torch.bfloat16 if a.bf16 else torch.float32)
    processor = AutoProcessor.from_pretrained(a.model)
    config = trl.DPOConfig(
        output_dir=a.output_dir,
        beta=a.beta,
        loss_type="sigmoid",
        max_prompt_length=None,  # never cut a prompt: its start holds the image tokens
        max_length=None,
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
    trainer = Qwen2VLDPOTrainer(model, args=config, train_dataset=train, processing_class=processor, peft_config=lora)
    trainer.train()
    trainer.save_model(a.output_dir)
    trainer.save_state()


if __name__ == "__main__":
    main()
