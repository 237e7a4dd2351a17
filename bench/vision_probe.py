"""Vision probe: can a tiny, from-scratch Qwen2-VL learn to localize at all, and after how many steps?

Why this exists: the effect study (bench/effect_study.py) needs an SFT model whose boxes depend on
the image, and its LLaMA-Factory SFT runs of 800-2500 steps never got there (docs/evaluation.md).
This script trains the same tiny model in process (plain PyTorch + transformers, ~3x faster per
step than a ``llamafactory-cli`` run on this CPU, and it can evaluate while training) on REC
answers over rendered scenes, and prints greedy REC accuracy on held-out scenes every
``--eval-every`` steps, so the step at which localization appears is measured, not guessed.

    python bench/vision_probe.py --out runs/probe/single --hide-label --steps 12000 --seed 1 \
        --eval-every 1000 --target-acc 0.8 --save runs/probe/single/model     # the effect study's pretraining

Measured (single shape, 16 visual tokens, 40 held-out scenes): localization appears as a *phase
change* whose timing depends on seed and schedule. A 10k-step schedule (seed 0) went from Acc@0.5
7.5% at 4k steps to 62.5% at 6k and 87.5% at 8k; with a 12k-step schedule seed 1 reached 25% at 6k
and 40% at 12k, while seed 0 was still at 7.5% at 12k. Every earlier attempt stopped long before
(LLaMA-Factory SFT runs of 800-2500 steps, docs/evaluation.md).

``--hide-label`` asks for "the shape" instead of its name (single-object scenes), so the answer's
label must be read from the image too. ``--save DIR`` writes a checkpoint that loads with
``AutoModelForImageTextToText`` and LLaMA-Factory (``--init DIR`` continues from one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # see the CPU note in docs/evaluation.md
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from spr_plugin.core.frame import ImageFrame, lf_preprocess_image  # noqa: E402
from spr_plugin.demo.scenes import CATEGORY_NAMES, SCENE_WORDS, render_scenes  # noqa: E402
from spr_plugin.demo.tiny_model import build_tiny_qwen2vl, set_image_budget  # noqa: E402
from spr_plugin.evaluation.config import RecConfig  # noqa: E402
from spr_plugin.evaluation.rec import default_prompt, evaluate_rec, rec_prompt  # noqa: E402
from spr_plugin.evaluation.rec_data import RecItem, rec_items_from_detections  # noqa: E402
from spr_plugin.families.box_formats import Qwen2VLFormat  # noqa: E402
from spr_plugin.families.prompts import Prompt  # noqa: E402
from spr_plugin.generation.model_runner import ModelRunner  # noqa: E402
from spr_plugin.generation.transformers_backend import load_rgb, to_chat_messages  # noqa: E402

HIDDEN_EXPRESSION = "the shape"


def encode_samples(samples: list[tuple[str, str, str]], proc, frame: ImageFrame | None = None) -> tuple[list[tuple], list[int]]:
    """Token ids, labels (prompt masked), pixel values and grid of each ``(image, user turn, answer)`` sample,
    through the chat template generation uses; returns them and the image grid of the last sample.

    ``frame`` applies LLaMA-Factory's pre-resize first (``None``: the processor's own resize only), so a
    study can train in the frame it samples, trains with LLaMA-Factory and evaluates in.
    """
    cache: dict[str, dict] = {}
    out, grid = [], []
    for image_path, user, answer in samples:
        prompt = proc.apply_chat_template(
            to_chat_messages(Prompt("train", user, (image_path,))), add_generation_prompt=True, tokenize=False
        )
        if image_path not in cache:
            image = load_rgb(image_path)
            if frame is not None:
                image = lf_preprocess_image(image, frame.image_max_pixels, frame.image_min_pixels)
            cache[image_path] = proc.image_processor(images=[image], return_tensors="pt")
        im = cache[image_path]
        grid = im["image_grid_thw"][0].tolist()
        prompt = prompt.replace("<|image_pad|>", "<|image_pad|>" * (int(im["image_grid_thw"].prod()) // 4))
        n_prompt = len(proc.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        ids = proc.tokenizer(prompt + answer + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        out.append((ids, [-100] * n_prompt + ids[n_prompt:], im["pixel_values"], im["image_grid_thw"]))
    return out, grid


def encode_items(items: list[RecItem], proc, hide_label: bool) -> list[tuple]:
    """Encoded REC training items (see :func:`encode_samples`); ``hide_label`` asks for "the shape"."""
    from PIL import Image

    fmt, template = Qwen2VLFormat(), default_prompt("qwen2_vl")
    samples = []
    for it in items:
        with Image.open(it.image) as im:
            answer = fmt.render(it.expression, it.box, *im.size)
        expr = HIDDEN_EXPRESSION if hide_label else it.expression
        samples.append((it.image, rec_prompt(expr, template), answer))
    return encode_samples(samples, proc)[0]


def collate(batch: list[tuple], pad_id: int, image_token_id: int) -> dict:
    import torch

    n = max(len(b[0]) for b in batch)
    ids = torch.tensor([b[0] + [pad_id] * (n - len(b[0])) for b in batch])
    return {
        "input_ids": ids,
        "labels": torch.tensor([b[1] + [-100] * (n - len(b[1])) for b in batch]),
        "attention_mask": torch.tensor([[1] * len(b[0]) + [0] * (n - len(b[0])) for b in batch]),
        "mm_token_type_ids": (ids == image_token_id).long(),
        "pixel_values": torch.cat([b[2] for b in batch]),
        "image_grid_thw": torch.cat([b[3] for b in batch]),
    }


def evaluate(model, proc, name: str, items: list[RecItem], out: Path, step: int, hide_label: bool) -> dict:
    """Greedy REC on held-out scenes; adds how many distinct answers and correct labels there were."""
    model.eval()
    proc.tokenizer.padding_side = "left"
    asked = [dataclasses.replace(t, expression=HIDDEN_EXPRESSION) for t in items] if hide_label else items
    path = out / f"eval_{step}.jsonl"
    path.unlink(missing_ok=True)
    report = evaluate_rec(asked, ModelRunner(model, proc, name, None), RecConfig(batch_size=32), path, progress=False)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    summary = report.to_dict()["summary"]
    summary |= {
        "distinct_answers": len({r["answer"] for r in rows}),
        "label_ok": sum(t.expression in r["answer"] for t, r in zip(items, rows)),
    }
    model.train()
    return summary


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    out: Path
    steps: int = 8000
    lr: float = 3e-3
    batch_size: int = 8
    train: str = "all"  # "all": vision tower, projector and LM; "lm": LM only (vision frozen at random init)
    hidden_size: int = 64
    num_layers: int = 2
    max_image_tokens: int = 16
    radius: tuple[float, float] = (0.12, 0.22)
    objects: tuple[int, int] = (1, 1)
    outline: int = 0
    scenes: int = 3000
    test_scenes: int = 40
    hide_label: bool = False
    eval_every: int = 2000
    target_acc: float | None = None  # stop at the first evaluation whose Acc@0.5 reaches this
    init: Path | None = None
    save: Path | None = None
    seed: int = 0


def rec_items(scenes_json: Path) -> list[RecItem]:
    return rec_items_from_detections(scenes_json, scenes_json.parent / "images")


def make_world(cfg: ProbeConfig) -> dict[str, Path]:
    worlds = {}
    for name, n, offset in (("train", cfg.scenes, 1000), ("test", cfg.test_scenes, 3000)):
        d = cfg.out / "world" / name
        if not (d / "instances.json").is_file():
            render_scenes(
                d,
                n_images=n,
                seed=cfg.seed + offset,
                min_objects=cfg.objects[0],
                max_objects=cfg.objects[1],
                radius=cfg.radius,
                outline=cfg.outline,
            )
        worlds[name] = d / "instances.json"
    return worlds


def run_probe(cfg: ProbeConfig) -> list[dict]:
    """Train, evaluating every ``eval_every`` steps; returns (and writes ``history.json``) the evaluations."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.manual_seed(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    worlds = make_world(cfg)
    if cfg.init is None:
        base = build_tiny_qwen2vl(
            cfg.out / "base",
            seed=cfg.seed,
            corpus=[*CATEGORY_NAMES, *SCENE_WORDS],
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
        )
        set_image_budget(base, 784 * cfg.max_image_tokens)
    else:
        base = cfg.init
    proc = AutoProcessor.from_pretrained(base)
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    train = encode_items(rec_items(worlds["train"]), proc, cfg.hide_label)
    test = rec_items(worlds["test"])
    print(f"train {len(train)} REC items, test {len(test)}; image grid {train[0][3].tolist()}", flush=True)

    if cfg.train == "lm":
        for name, param in model.named_parameters():
            param.requires_grad_("visual" not in name)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=cfg.lr, weight_decay=0.0)
    warmup = 50
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / cfg.steps))
    rng = random.Random(cfg.seed)
    pad_id, image_id = proc.tokenizer.pad_token_id, model.config.image_token_id
    history: list[dict] = []
    model.train()
    t0 = time.monotonic()
    for step in range(1, cfg.steps + 1):
        loss = model(**collate(rng.sample(train, cfg.batch_size), pad_id, image_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.3f} {time.monotonic() - t0:.0f}s", flush=True)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            summary = evaluate(model, proc, str(base), test, cfg.out, step, cfg.hide_label)
            history.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(time.monotonic() - t0), **summary})
            print(f"EVAL step {step}: {json.dumps(history[-1])}", flush=True)
            (cfg.out / "history.json").write_text(json.dumps(history, indent=1))
            if cfg.target_acc is not None and summary["accuracy"]["0.5"] >= cfg.target_acc:
                break
    if cfg.save is not None:
        model.save_pretrained(cfg.save)
        proc.save_pretrained(cfg.save)
        for f in Path(base).glob("*.json"):  # tokenizer/processor files the save did not write
            if not (cfg.save / f.name).exists():
                shutil.copy2(f, cfg.save / f.name)
    return history


def main(argv: list[str] | None = None) -> int:
    d = ProbeConfig(out=Path("."))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--train", default=d.train, choices=["all", "lm"], help="all = vision tower, projector and LM; lm = LM only")
    p.add_argument("--hidden-size", type=int, default=d.hidden_size)
    p.add_argument("--num-layers", type=int, default=d.num_layers)
    p.add_argument("--max-image-tokens", type=int, default=d.max_image_tokens)
    p.add_argument("--radius", default="0.12,0.22", help="shape circumradius range, fraction of the shorter image side")
    p.add_argument("--objects", default="1,1", help="objects per scene, min,max")
    p.add_argument("--outline", type=int, default=d.outline)
    p.add_argument("--scenes", type=int, default=d.scenes)
    p.add_argument("--test-scenes", type=int, default=d.test_scenes)
    p.add_argument("--hide-label", action="store_true")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--target-acc", type=float, default=None, help="stop once held-out Acc@0.5 reaches this")
    p.add_argument("--init", type=Path, default=None, help="continue from this checkpoint instead of a fresh tiny model")
    p.add_argument("--save", type=Path, default=None)
    p.add_argument("--seed", type=int, default=d.seed)
    a = p.parse_args(argv)
    cfg = ProbeConfig(
        out=a.out,
        steps=a.steps,
        lr=a.lr,
        batch_size=a.batch_size,
        train=a.train,
        hidden_size=a.hidden_size,
        num_layers=a.num_layers,
        max_image_tokens=a.max_image_tokens,
        radius=tuple(float(x) for x in a.radius.split(",")),  # type: ignore[arg-type]
        objects=tuple(int(x) for x in a.objects.split(",")),  # type: ignore[arg-type]
        outline=a.outline,
        scenes=a.scenes,
        test_scenes=a.test_scenes,
        hide_label=a.hide_label,
        eval_every=a.eval_every,
        init=a.init,
        save=a.save,
        seed=a.seed,
    )
    run_probe(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
