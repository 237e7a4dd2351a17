"""Short probes that fix the v3 base's settings (issue #21: "off the floor").

The v2 base sat at REC Acc@0.9 0.01: with 6x6 visual tokens of 28 px its boxes carry about 7 px of
independent noise per edge, which on shapes of 34-74 px never reaches IoU 0.9. A base that leaves
room for SPR to push boxes over 0.9 needs a smaller error *relative to the object*: larger objects
relative to the grid, more visual tokens, or longer training. Each probe trains the study's tiny
Qwen2-VL (rope_theta 10, in process, batch 8, lr 3e-3) on single-shape REC of one setting and prints
greedy held-out Acc@0.5 / Acc@0.9 every ``--eval-every`` steps; the figures are recorded in
docs/effect_study/v3_probes.json and v3_plan.md.

    OMP_NUM_THREADS=1 python bench/study_v3_probe.py --out runs/v3probe/big168 --side 168 --radius 0.25,0.42 --steps 3000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(REPO), str(REPO / "bench")) if p not in sys.path]

from spr_plugin.core.frame import ImageFrame  # noqa: E402
from spr_plugin.demo.scenes import CATEGORY_NAMES, SCENE_WORDS, render_scenes  # noqa: E402
from spr_plugin.evaluation.config import RecConfig  # noqa: E402
from spr_plugin.evaluation.rec import default_prompt, evaluate_rec, rec_prompt  # noqa: E402
from spr_plugin.evaluation.rec_data import rec_items_from_detections  # noqa: E402
from spr_plugin.families.box_formats import Qwen2VLFormat  # noqa: E402
from spr_plugin.generation.model_runner import ModelRunner  # noqa: E402


def build_init(out: Path, seed: int, side: int, hidden: int, layers: int, theta: float) -> Path:
    """The study's random tiny Qwen2-VL with rope_theta ``theta`` and an image budget of exactly side x side."""
    from spr_plugin.demo.tiny_model import build_tiny_qwen2vl, set_image_budget

    init = build_tiny_qwen2vl(out, seed=seed, corpus=[*CATEGORY_NAMES, *SCENE_WORDS], hidden_size=hidden, num_layers=layers)
    conf_path = init / "config.json"
    conf = json.loads(conf_path.read_text())
    text = conf.get("text_config", conf)
    for key in ("rope_parameters", "rope_scaling"):
        if isinstance(text.get(key), dict):
            text[key]["rope_theta"] = theta
    if "rope_theta" in text:
        text["rope_theta"] = theta
    conf_path.write_text(json.dumps(conf, indent=2))
    set_image_budget(init, side * side)
    return init


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--side", type=int, default=168, help="image side in pixels, a multiple of 28")
    p.add_argument("--radius", default="0.25,0.42")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--scenes", type=int, default=2000)
    p.add_argument("--test-scenes", type=int, default=60)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from vision_probe import collate, encode_samples

    if a.side % 28:
        raise SystemExit("--side must be a multiple of 28")
    radius = tuple(float(x) for x in a.radius.split(","))
    frame = ImageFrame(image_max_pixels=a.side * a.side, image_min_pixels=32 * 32)
    a.out.mkdir(parents=True, exist_ok=True)
    sets = {}
    for name, n, off in (("train", a.scenes, 1000), ("test", a.test_scenes, 3000)):
        d = a.out / "world" / name
        if not (d / "instances.json").is_file():
            render_scenes(d, n_images=n, seed=a.seed + off, size=(a.side, a.side), min_objects=1, max_objects=1, radius=radius)
        sets[name] = rec_items_from_detections(d / "instances.json", d / "images")
    torch.manual_seed(a.seed)
    init = build_init(a.out / "init", a.seed, a.side, a.hidden_size, a.num_layers, 10.0)
    proc = AutoProcessor.from_pretrained(init)
    model = AutoModelForImageTextToText.from_pretrained(init, dtype=torch.float32)
    fmt, template = Qwen2VLFormat(), default_prompt("qwen2_vl")
    samples = [
        (it.image, rec_prompt(it.expression, template), fmt.render(it.expression, it.box, a.side, a.side)) for it in sets["train"]
    ]
    data, grid = encode_samples(samples, proc, frame)
    print(f"grid {grid}, {len(data)} train items", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * max(0.05, 1 - s / a.steps))
    rng = random.Random(a.seed)
    history = []
    t0 = time.monotonic()
    model.train()
    for step in range(1, a.steps + 1):
        loss = model(**collate(rng.sample(data, 8), proc.tokenizer.pad_token_id, model.config.image_token_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % a.eval_every == 0 or step == a.steps:
            model.eval()
            proc.tokenizer.padding_side = "left"
            path = a.out / f"eval_{step}.jsonl"
            path.unlink(missing_ok=True)
            rep = evaluate_rec(
                sets["test"],
                ModelRunner(model, proc, str(init), None),
                RecConfig(
                    batch_size=32,
                    max_new_tokens=48,
                    frame=frame,
                ),
                path,
                progress=False,
            )
            s = rep.to_dict()["summary"]
            history.append({"step": step, "seconds": round(time.monotonic() - t0), "loss": round(loss.item(), 4), **s})
            print("EVAL", json.dumps(history[-1]), flush=True)
            (a.out / "history.json").write_text(
                json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "grid": grid, "history": history}, indent=1)
            )
            model.train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
