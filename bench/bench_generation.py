"""Candidate generation throughput with the tiny local Qwen2-VL: one prompt per call vs batched, in
process and through an OpenAI-compatible server (``llamafactory-cli api`` on a loopback port).

The tiny model is random, so every sample runs to ``--max-new-tokens``: the figures compare back ends and
batching at a fixed amount of decoding, not model quality. On a GPU with a real checkpoint the same
script shows the batching gain of the real model (``--model``); for a vLLM server pass ``--base-url``.

    python bench/bench_generation.py
    python bench/bench_generation.py --model /models/Qwen2-VL-7B-Instruct --device cuda --regions 64
    python bench/bench_generation.py --base-url http://gpu-node:8000/v1 --served-model qwen2-vl --no-local
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spr_plugin.core.options import VARIANTS  # noqa: E402
from spr_plugin.families.profiles import get_box_format  # noqa: E402
from spr_plugin.generation.candidates import generate_candidates  # noqa: E402
from spr_plugin.generation.server_backend import OpenAIServerGenerator  # noqa: E402
from spr_plugin.generation.transformers_backend import TransformersGenerator  # noqa: E402
from spr_plugin.settings import GenerationConfig, ServerConfig  # noqa: E402


def _regions(n_images: int, work: Path):
    from spr_plugin.demo.scenes import render_scenes
    from spr_plugin.regions.sampling import RegionConfig, load_coco, sample_regions

    coco = render_scenes(work / "scenes", n_images=n_images, seed=0)
    return list(sample_regions(load_coco(coco), coco.parent / "images", RegionConfig(regions_per_image=2)))


def _run(label: str, regions, generator, work: Path, batch_size: int, a) -> float:
    out = work / f"{label.replace(' ', '_')}.jsonl"
    stats = generate_candidates(
        regions,
        generator,
        get_box_format("qwen2_vl"),
        out,
        variants=VARIANTS,
        num_samples=a.num_samples,
        batch_size=batch_size,
        temperature=0.9,
        progress=False,
    )
    rate = stats.candidates_per_second
    print(f"{label:38s}: {rate:7.2f} candidates/s  ({stats.generated} in {stats.seconds:.1f} s)", flush=True)
    return rate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_lf_api(model: str, work: Path, max_concurrent: int) -> tuple[subprocess.Popen, str]:
    cfg = work / "api.yaml"
    cfg.write_text(f"model_name_or_path: {model}\ntemplate: qwen2_vl\ninfer_backend: huggingface\nskip_special_tokens: false\n")
    port = _free_port()
    env = {**os.environ, "API_HOST": "127.0.0.1", "API_PORT": str(port), "API_MODEL_NAME": "bench"}
    env["MAX_CONCURRENT"] = str(max_concurrent)  # LLaMA-Factory's HF engine: generate() calls at a time
    cli = os.path.join(os.path.dirname(sys.executable), "llamafactory-cli")
    log = (work / "api.log").open("w")
    proc = subprocess.Popen([cli, "api", str(cfg)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(360):
        try:
            urllib.request.urlopen(url + "/models", timeout=2).close()
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"llamafactory-cli api exited; see {work / 'api.log'}") from None
            time.sleep(0.5)
    raise SystemExit("llamafactory-cli api did not come up")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint folder (default: build the tiny random Qwen2-VL)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=4, help="rendered scenes (2 regions each, 3 prompt variants per region)")
    ap.add_argument("--num-samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--base-url", default=None, help="benchmark this server instead of starting llamafactory-cli api")
    ap.add_argument("--served-model", default="bench")
    ap.add_argument("--no-local", action="store_true", help="skip the in-process runs")
    ap.add_argument("--no-server", action="store_true", help="skip the server runs")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_generation_"))
    model = a.model
    if model is None:
        from spr_plugin.demo.scenes import CATEGORY_NAMES, SCENE_WORDS
        from spr_plugin.demo.tiny_model import build_tiny_qwen2vl

        model = str(build_tiny_qwen2vl(work / "tiny-qwen2vl", corpus=[*CATEGORY_NAMES, *SCENE_WORDS]))
    regions = _regions(a.images, work)
    print(f"{len(regions)} regions x {len(VARIANTS)} variants x {a.num_samples} samples, max_new_tokens={a.max_new_tokens}")
    print(f"torch threads: {__import__('torch').get_num_threads()}, load average: {os.getloadavg()[0]:.1f}", flush=True)

    if not a.no_local:
        gen = TransformersGenerator(
            GenerationConfig(model=model, num_samples=a.num_samples, max_new_tokens=a.max_new_tokens, device=a.device)
        )
        _run("warm-up", regions[:1], gen, work, 1, a)
        one = _run("in process, 1 prompt per call", regions, gen, work, 1, a)
        batched = _run(f"in process, {a.batch_size} prompts per call", regions, gen, work, a.batch_size, a)
        print(f"batching speed-up: x{batched / one:.2f}")

    if not a.no_server:
        proc = None
        url = a.base_url
        if url is None:
            proc, url = _start_lf_api(model, work, max_concurrent=1)
            a.served_model = "bench"
        try:
            warm = ServerConfig(url, a.served_model, num_samples=a.num_samples, max_new_tokens=a.max_new_tokens)
            with OpenAIServerGenerator(warm) as gen:
                _run("server warm-up", regions[:1], gen, work, 1, a)
            for conc in (1, a.concurrency):
                n, tokens = a.num_samples, a.max_new_tokens
                cfg = ServerConfig(url, a.served_model, num_samples=n, max_new_tokens=tokens, concurrency=conc)
                with OpenAIServerGenerator(cfg) as gen:
                    _run(f"server, concurrency {conc}", regions, gen, work, 4 * conc, a)
        finally:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
