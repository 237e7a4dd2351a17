"""What the three roads cost per step on this machine: LLaMA-Factory DPO, TRL DPO, online GRPO with the SPR reward.

Builds rendered scenes, pairs (synthetic grounded candidates) and the tiny local Qwen2-VL, exports both parquets
and times ``--steps`` optimizer steps of each, LoRA rank 8 on the language model, the same image frame: seconds
per step of ``llamafactory-cli train`` (``stage: dpo``, ``--batch`` pairs; its ``train_runtime`` over the steps) and
of TRL's DPOTrainer (``--batch`` pairs) and GRPOTrainer (``--batch`` answers = ``--batch / --generations`` prompts,
up to ``--new-tokens`` sampled tokens each), all means over every step, and the reward's throughput on the
completions GRPO sampled (the real MiniLM scorer). The tiny model makes model time small, so the figures show the
structure of the costs (GRPO decodes and scores, DPO does not), not a GPU budget.

    OMP_NUM_THREADS=1 python bench/bench_roads.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

FRAME = 12544


def prepare(root: Path) -> tuple[Path, Path, Path]:
    """(tiny model, DPO parquet, GRPO prompt parquet) built with the CLI users run."""
    from candidates_factory import write_candidates
    from spr_plugin.demo.scenes import CATEGORY_NAMES, SCENE_WORDS, render_scenes
    from spr_plugin.demo.tiny_model import build_tiny_qwen2vl

    spr = [sys.executable, "-m", "spr_plugin.cli"]
    model = build_tiny_qwen2vl(root / "tiny", corpus=[*CATEGORY_NAMES, *SCENE_WORDS])
    scenes = render_scenes(root / "scenes", n_images=8, seed=3)
    common = ["--annotations", str(scenes), "--images", str(scenes.parent / "images")]
    run = {"check": True, "capture_output": True}
    subprocess.run([*spr, "regions", *common, "--out", str(root / "r.jsonl")], **run)
    write_candidates(root / "r.jsonl", root / "c.jsonl")
    frame = ["--image-max-pixels", str(FRAME)]
    build = [*common, "--candidates", str(root / "c.jsonl"), "--work-dir", str(root / "w"), "--dataset-dir", str(root / "d")]
    subprocess.run([*spr, "build", *build, "--name", "spr_bench", "--min-margin", "0", *frame], **run)
    subprocess.run([*spr, "export-hf", "--dataset-dir", str(root / "d"), "--name", "spr_bench", "--out", str(root)], **run)
    grpo = ["--regions", str(root / "r.jsonl"), "--out", str(root / "grpo.parquet"), "--images", str(scenes.parent / "images")]
    subprocess.run([*spr, "export-grpo", *grpo, *frame], **run)
    return model, root / "spr_bench.parquet", root / "grpo.parquet"


class StepTimer:
    """A trainer callback: wall time of every optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t = 0.0

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t)


def _callback(timer: StepTimer):
    from transformers import TrainerCallback

    class _Timer(TrainerCallback):
        on_step_begin = timer.on_step_begin
        on_step_end = timer.on_step_end

    return _Timer()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=4, help="DPO pairs / GRPO answers per step")
    p.add_argument("--generations", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=32)
    a = p.parse_args()

    import datasets
    from peft import LoraConfig
    from transformers import AutoProcessor

    from spr_plugin.llamafactory.train import CPU_RUN_SETTINGS, run_train, write_yaml
    from spr_plugin.trl.dpo import Qwen2VLDPOTrainer, Qwen2VLGRPOTrainer, import_trl
    from spr_plugin.trl.grpo_reward import SPRReward

    trl = import_trl()
    root = Path(tempfile.mkdtemp(prefix="bench_roads_"))
    model, dpo_parquet, grpo_parquet = prepare(root)
    common = dict(max_steps=a.steps, per_device_train_batch_size=a.batch, learning_rate=1e-4, save_strategy="no")
    common.update(use_cpu=True, report_to="none", logging_steps=1000, max_prompt_length=None, seed=0)
    lora = LoraConfig(r=8, target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")

    dpo_timer = StepTimer()
    train = datasets.load_dataset("parquet", data_files=str(dpo_parquet), split="train", cache_dir=str(root / "cache"))
    config = trl.DPOConfig(output_dir=str(root / "dpo"), max_length=None, **common)
    processor = AutoProcessor.from_pretrained(model)
    trainer = Qwen2VLDPOTrainer(str(model), args=config, train_dataset=train, processing_class=processor, peft_config=lora)
    trainer.add_callback(_callback(dpo_timer))
    trainer.train()

    grpo_timer = StepTimer()
    processor = AutoProcessor.from_pretrained(model, padding_side="left")
    reward = SPRReward.load(tokenizer=processor)
    sampled: list[tuple[list, list]] = []

    def recording_reward(**kw):
        sampled.append((kw["completion_ids"], kw["region"]))
        return reward(**kw)

    recording_reward.__name__ = "spr_reward"
    train = datasets.load_dataset("parquet", data_files=str(grpo_parquet), split="train", cache_dir=str(root / "cache"))
    config = trl.GRPOConfig(
        output_dir=str(root / "grpo"), num_generations=a.generations, max_completion_length=a.new_tokens, **common
    )
    trainer = Qwen2VLGRPOTrainer(
        str(model),
        reward_funcs=[recording_reward],
        args=config,
        train_dataset=train,
        processing_class=processor,
        peft_config=lora,
    )
    trainer.add_callback(_callback(grpo_timer))
    trainer.train()

    from spr_plugin.core.records import Region

    texts = [t for ids, _ in sampled for t in reward.completion_texts([None] * len(ids), ids)]
    regions = [Region.from_dict(r) for _, regs in sampled for r in regs]
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        reward.score(texts, regions)
        best = min(best, time.perf_counter() - t0)

    def per_step(times: list[float]) -> float:
        return sum(times) / len(times)  # every step, as LLaMA-Factory's train_runtime counts them

    lf_out = root / "lf_dpo"
    overrides = {**CPU_RUN_SETTINGS, "stage": "dpo", "do_train": True, "finetuning_type": "lora", "lora_rank": 8}
    overrides.update(lora_target="all", pref_beta=0.1, pref_loss="sigmoid", template="qwen2_vl", cutoff_len=1024)
    overrides.update(model_name_or_path=str(model), image_max_pixels=FRAME, dataset_dir=str(root / "d"), dataset="spr_bench")
    overrides.update(output_dir=str(lf_out), max_steps=a.steps, per_device_train_batch_size=a.batch, learning_rate=1e-4)
    overrides.update(logging_steps=1000, freeze_vision_tower=True, freeze_multi_modal_projector=True)
    run_train(write_yaml(root / "lf_dpo.yaml", overrides), log_path=root / "lf_dpo.log", echo=False)
    lf_runtime = json.loads((lf_out / "train_results.json").read_text())["train_runtime"]

    print(f"LLaMA-Factory DPO: {lf_runtime / a.steps:.3f} s/step ({a.batch} pairs/step, mean of {a.steps} steps)")
    print(f"TRL DPO:  {per_step(dpo_timer.times):.3f} s/step ({a.batch} pairs/step, mean of {a.steps} steps)")
    print(
        f"TRL GRPO: {per_step(grpo_timer.times):.3f} s/step ({a.batch} answers = {a.batch // a.generations} prompts x "
        f"{a.generations}, up to {a.new_tokens} new tokens, mean of {a.steps} steps)"
    )
    print(f"SPR reward: {len(texts) / best:.0f} completions/s ({len(texts)} sampled completions, best of 3)")


if __name__ == "__main__":
    main()
