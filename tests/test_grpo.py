"""The online SPR reward (TRL's reward-function signature) with the real scorer, its guards against reward hacking,
`spr export-grpo`, and TRL's GRPOTrainer running it on the tiny Qwen2-VL (and, slow, on the demo's warmed-up model,
whose sampled completions carry boxes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import H, W, region, run_spr
from spr_plugin.core.errors import ConfigError, SPRError
from spr_plugin.core.jsonl import atomic_write_jsonl
from spr_plugin.core.records import Box, Candidate, Region
from spr_plugin.families.profiles import get_box_format
from spr_plugin.families.prompts import PROMPT_TEMPLATE, training_prompt
from spr_plugin.regions.sampling import RegionConfig, load_coco, sample_regions
from spr_plugin.scoring.scorer import CandidateScorer
from spr_plugin.scoring.semantic import TextSemanticScorer
from spr_plugin.settings import ScoringConfig
from spr_plugin.trl.grpo_reward import MALFORMED_REWARD, SPRReward, malformed_reason

ROOT = Path(__file__).resolve().parents[1]
SPR = [sys.executable, "-m", "spr_plugin.cli"]
FMT = get_box_format("qwen2_vl")
FRAME = 12544


@pytest.fixture(scope="module")
def scorer() -> CandidateScorer:
    return CandidateScorer(ScoringConfig(), TextSemanticScorer.load())


@pytest.fixture(scope="module")
def reward(scorer) -> SPRReward:
    return SPRReward(scorer)


def _call(reward: SPRReward, texts: list[str], reg: Region, **kw) -> list[float]:
    """The reward called exactly as TRL's GRPOTrainer calls it (conversational completions, repeated columns)."""
    n = len(texts)
    prompts = [[{"role": "user", "content": training_prompt(reg, FMT)}]] * n
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    columns = {"region": [reg.to_dict()] * n, "box_format": ["qwen2_vl"] * n, "images": [[]] * n, "trainer_state": None}
    return reward(prompts=prompts, completions=completions, **{**columns, **kw})


def _good(reg: Region) -> str:
    return "The region shows " + " and ".join(FMT.render(o.category, o.box, W, H) for o in reg.objects) + "."


def test_reward_is_the_pair_builders_score(reward, scorer):
    reg = region()
    texts = [
        _good(reg),
        f"A {FMT.render('red circle', Box(300, 200, 420, 300), W, H)} only.",
        "The region shows a red circle and a blue square.",
    ]
    got = _call(reward, texts, reg)
    expected = scorer.score([(reg, Candidate(reg.region_id, "any", i, t)) for i, t in enumerate(texts)])
    assert got == pytest.approx([s.score for s in expected], abs=1e-6)
    assert got[0] > max(got[1:]) and min(got) >= 0.0  # the exact boxes win
    assert reward.__name__ == "spr_reward"


def test_duplicate_boxes_earn_nothing(reward):
    reg = region()
    good, (first, second) = _good(reg), reg.objects
    one = f"The region shows {FMT.render(first.category, first.box, W, H)}."
    dup = FMT.render(first.category, first.box, W, H)
    texts = [good, good[:-1] + f" and another {dup}.", good[:-1] + f", {dup}, {dup} and {dup}.", one, one[:-1] + f" and {dup}."]
    r_good, r_dup1, r_dup3, r_one, r_one_dup = _call(reward, texts, reg)
    assert r_good > r_dup1 > r_dup3  # each repeat of a matched box lowers the reward
    assert r_one > r_one_dup  # also when an object is still missing: repeating is no way to cover it
    # a copy of the *other* object's box under the first object's name is no match either
    wrong = good[:-1] + f" and a {FMT.render(first.category, second.box, W, H)}."
    assert _call(reward, [wrong], reg)[0] < r_good


def test_hallucinated_boxes_earn_nothing(reward):
    reg = region()
    good = _good(reg)
    invented = [FMT.render("green triangle", Box(10 + 60 * k, 400, 60 + 60 * k, 470), W, H) for k in range(4)]
    texts = [good] + [good[:-1] + ", next to " + ", ".join(invented[:k]) + "." for k in (1, 2, 4)]
    rewards = _call(reward, texts, reg)
    assert rewards == sorted(rewards, reverse=True) and len(set(rewards)) == 4
    # spraying boxes over the image does not find the objects either
    spray = " ".join(FMT.render("shape", Box(x, y, x + 80, y + 80), W, H) for x in range(0, 560, 80) for y in range(0, 400, 80))
    assert _call(reward, [spray], reg)[0] < _call(reward, ["The region shows a red circle and a blue square."], reg)[0]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("A <|object_ref_start|>red circle<|object_ref_end|><|box_start|>(100,100),(200", "box_truncated"),
        ("A <|object_ref_start|>red circle<|object_ref_end|><|box_start|>(a,b),(c,d)<|box_end|>.", "box_garbage"),
        ("A <|object_ref_start|>red circle<|object_ref_end|><|box_start|>(300,300),(100,100)<|box_end|>.", "box_reversed"),
        ("A <|object_ref_start|>red circle<|object_ref_end|><|box_start|>(100,100),(5000,200)<|box_end|>.", "box_out_of_range"),
        ("A red circle<|image_pad|> and a blue square.", "foreign_token"),
        ("<|im_start|>assistant\nA red circle.", "foreign_token"),
    ],
)
def test_malformed_output_scores_the_floor(reward, text, reason):
    reg = region()
    (result,) = reward.score([text], [reg])
    assert result.malformed == reason and result.reward == MALFORMED_REWARD == _call(reward, [text], reg)[0]


def test_the_floor_is_below_every_well_formed_completion(reward, scorer):
    """Well-formed completions score S in [-penalty, 1] (no box at all included), so the floor (-1) is strictly lowest;
    a custom floor is kept, one that is not below -penalty (the hallucination penalty's weight) is refused."""
    reg = region()
    far = FMT.render("pink elephant", Box(600, 440, 639, 479), W, H)
    texts = ["x", "Nothing to see.", f"Only {far}.", _good(reg), "The region shows a red circle and a blue square."]
    rewards = _call(reward, texts, reg)
    assert min(rewards) >= 0.0 > MALFORMED_REWARD and max(rewards) <= 1.0
    assert _call(SPRReward(scorer, malformed_reward=-5.0), ["", "x"], reg)[0] == -5.0
    worst = -ScoringConfig().hallucination_penalty  # a well-formed text naming only absent objects
    for floor in (worst / 2, 0.0, 0.5, float("nan")):
        with pytest.raises(ConfigError, match=f"malformed reward must be below {worst:g}"):
            SPRReward(scorer, malformed_reward=floor)


def test_gameable_or_unbounded_settings_are_refused_before_any_model_loads():
    with pytest.raises(ConfigError, match="needs --loc-metric hungarian"):
        SPRReward.load(ScoringConfig(loc_metric="paper"), text_model="/nonexistent/model")
    with pytest.raises(ConfigError, match="needs --score-norm none, got 'zscore'"):
        SPRReward.load(ScoringConfig(score_norm="zscore"), text_model="/nonexistent/model")


def test_completion_ids_are_decoded_with_the_box_tokens(reward, scorer, tiny_qwen2vl):
    """TRL's completion texts lose Qwen's box tokens (skip_special_tokens=True); the reward reads the ids."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_qwen2vl)
    tok = processor.tokenizer
    reg = region()
    text = _good(reg)
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    trl_text = tok.decode(ids, skip_special_tokens=True)
    assert "<|box_start|>" not in trl_text and FMT.parse(trl_text, W, H).boxes == []
    with_ids = SPRReward(scorer, tokenizer=processor)
    (r_ids,) = _call(with_ids, [trl_text], reg, completion_ids=[ids])
    assert r_ids == pytest.approx(_call(reward, [text], reg)[0]) and r_ids > _call(reward, [trl_text], reg)[0]
    with pytest.raises(SPRError, match="needs tokenizer="):
        _call(reward, [trl_text], reg, completion_ids=[ids])


def test_reward_refuses_rows_it_cannot_score(reward):
    reg = region()
    with pytest.raises(SPRError, match="no 'region' column.*spr export-grpo"):
        reward(prompts=[None], completions=["a"])
    with pytest.raises(SPRError, match=r"row 1: the 'region' column does not hold a region \(KeyError"):
        reward(prompts=[None, None], completions=["a", "b"], region=[reg.to_dict(), {"box": [1, 2, 3, 4]}])
    with pytest.raises(SPRError, match="written for box format qwen2_5_vl but the reward parses qwen2_vl"):
        _call(reward, ["a"], reg, box_format=["qwen2_5_vl"])
    with pytest.raises(SPRError, match="2 completions but 1 regions"):
        reward(prompts=[None, None], completions=["a", "b"], region=[reg.to_dict()])


def test_qwen25_reward_parses_in_the_rows_image_frame(scorer, synthetic_scenes):
    """Qwen2.5-VL boxes are pixels of the pre-resized input: the same text means other boxes in another frame, so
    the reward parses in the frame the prompts were written for and refuses rows of another one."""
    from spr_plugin.core.frame import ImageFrame
    from spr_plugin.inspect.hf_export import FrameFacts

    reg = next(iter(sample_regions(load_coco(synthetic_scenes), synthetic_scenes.parent / "images", RegionConfig(k=3))))
    small = FrameFacts("qwen2_5_vl", ImageFrame(FRAME, 1024)).box_format_obj()
    text = "The region shows " + " and ".join(small.render(o.category, o.box, reg.width, reg.height) for o in reg.objects)
    n = 1
    columns = {"region": [reg.to_dict()] * n, "box_format": ["qwen2_5_vl"] * n}
    in_frame = SPRReward(CandidateScorer(ScoringConfig(box_format="qwen2_5_vl"), scorer.semantic, small))
    default = SPRReward(CandidateScorer(ScoringConfig(box_format="qwen2_5_vl"), scorer.semantic))  # 768*768 frame
    (r_small,) = in_frame(completions=[text], image_max_pixels=[FRAME], image_min_pixels=[1024], **columns)
    (s_small,) = in_frame.score([text], [reg])
    assert s_small.scored.localization.score > 0.85 and r_small == pytest.approx(s_small.reward)
    assert default.score([text], [reg])[0].scored.localization.score < 0.3  # read in the wrong frame: other boxes
    with pytest.raises(
        SPRError, match=r"image frame .* \(12544, 1024\) but the reward's qwen2_5_vl parser uses \(589824, 1024\)"
    ):
        default(completions=[text], image_max_pixels=[FRAME], image_min_pixels=[1024], **columns)


# -- spr export-grpo ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regions_file(synthetic_scenes, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("grpo") / "regions.jsonl"
    regions = list(sample_regions(load_coco(synthetic_scenes), synthetic_scenes.parent / "images", RegionConfig(k=3, seed=2)))
    atomic_write_jsonl(path, [r.to_dict() for r in regions])
    return path


@pytest.fixture(scope="module")
def prompts_parquet(regions_file) -> Path:
    out = regions_file.parent / "prompts.parquet"
    proc = run_spr("export-grpo", "--regions", regions_file, "--out", out, "--image-max-pixels", FRAME, *_images(regions_file))
    assert proc.returncode == 0, proc.stderr
    return out


def _images(regions_file: Path) -> list[str]:
    """``--images`` naming the folder the regions were sampled from (a regions file's own root is never trusted)."""
    return ["--images", _regions(regions_file)[0].image_root]


def _regions(path: Path) -> list[Region]:
    return [Region.from_dict(json.loads(line)) for line in path.read_text().splitlines()]


def test_export_grpo_writes_prompts_images_and_annotations(prompts_parquet, regions_file, tmp_path):
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(prompts_parquet), split="train", cache_dir=str(tmp_path / "c"))
    regions = _regions(regions_file)
    assert ds.num_rows == len(regions) > 0
    assert isinstance(ds.features["images"].feature, datasets.Image)
    for row, reg in zip(ds, regions):
        assert Region.from_dict(row["region"]) == reg
        (turn,) = row["prompt"]
        assert turn["role"] == "user" and turn["content"][0] == {"type": "image", "text": None}
        assert "<image>" + turn["content"][1]["text"] == training_prompt(reg, FMT)
        assert (row["box_format"], row["image_max_pixels"], row["image_min_pixels"]) == ("qwen2_vl", FRAME, 1024)
        assert row["prompt_template"] == PROMPT_TEMPLATE
        (img,) = row["images"]
        assert img.size == (reg.width, reg.height)  # the original image; the trainer applies the recorded frame


def test_export_grpo_writes_qwen25_region_boxes_in_the_recorded_frame(regions_file, tmp_path):
    import datasets

    from spr_plugin.core.frame import ImageFrame
    from spr_plugin.inspect.hf_export import FrameFacts

    out = tmp_path / "q25.parquet"
    cmd = ["export-grpo", "--regions", regions_file, "--out", out, "--box-format", "qwen2_5_vl"]
    proc = run_spr(*cmd, "--image-max-pixels", FRAME, *_images(regions_file))
    assert proc.returncode == 0, proc.stderr
    row = datasets.load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "c"))[0]
    reg = _regions(regions_file)[0]
    in_frame = training_prompt(reg, FrameFacts("qwen2_5_vl", ImageFrame(FRAME, 1024)).box_format_obj())
    assert "<image>" + row["prompt"][0]["content"][1]["text"] == in_frame != training_prompt(reg, get_box_format("qwen2_5_vl"))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "spr export-grpo: error: region file not found: {tmp}/nope.jsonl"),
        ("not_parquet", "spr export-grpo: error: the output must be a .parquet file, got {tmp}/out.json"),
        ("max_regions", "spr export-grpo: error: --max-regions must be at least 1, got 0"),
        (
            "box_format",
            "spr export-grpo: error: unknown box format 'yolo'; "
            "choose one of glm4v, internvl, qwen2_5_vl, qwen2_5_vl_json, qwen2_vl, qwen3_vl",
        ),
        ("image", "spr export-grpo: error: region {rid}: image {root}/gone.jpg is unusable (missing image)"),
        (
            "outside",
            "spr export-grpo: error: region {rid}: image '/etc/passwd' points outside the image folders named on the command "
            "line ({root}: --images); refusing to read it; pass --images {root} if you trust this file",
        ),
        ("bad_line", "spr export-grpo: error: {tmp}/bad.jsonl:1: not a valid region (KeyError: 'region_id')"),
    ],
)
def test_export_grpo_user_errors_are_one_line(regions_file, tmp_path, case, message):
    reg = _regions(regions_file)[0]
    regions, out, extra = regions_file, tmp_path / "out.parquet", []
    if case == "missing":
        regions = tmp_path / "nope.jsonl"
    elif case == "not_parquet":
        out = tmp_path / "out.json"
    elif case == "max_regions":
        extra = ["--max-regions", "0"]
    elif case == "box_format":
        extra = ["--box-format", "yolo"]
    elif case == "image":
        regions = tmp_path / "gone.jsonl"
        atomic_write_jsonl(regions, [{**reg.to_dict(), "image_path": str(Path(reg.image_root) / "gone.jpg")}])
    elif case == "outside":  # a regions file must not embed any file of the disk into the parquet
        regions = tmp_path / "evil.jsonl"
        atomic_write_jsonl(regions, [{**reg.to_dict(), "image_path": "/etc/passwd"}])
    elif case == "bad_line":
        regions = tmp_path / "bad.jsonl"
        regions.write_text('{"image_id": 1}\n')
    proc = run_spr("export-grpo", "--regions", regions, "--out", out, *extra, *_images(regions_file))
    assert proc.returncode == 2
    assert proc.stderr.strip() == message.format(tmp=tmp_path, rid=reg.region_id, root=reg.image_root)
    assert not out.exists()


# -- TRL's GRPOTrainer ----------------------------------------------------------------------------------------


class Recorder:
    """The reward, recording what TRL passed and what it returned."""

    __name__ = "spr_reward"

    def __init__(self, reward: SPRReward) -> None:
        self.reward, self.calls = reward, []

    def __call__(self, **kwargs):
        out = self.reward(**kwargs)
        self.calls.append((kwargs, out))
        return out


def _run_grpo(
    model_dir: Path, parquet: Path, out: Path, scorer: CandidateScorer, steps: int = 2, max_completion_length: int = 24
):
    import datasets
    from transformers import AutoProcessor

    from spr_plugin.trl.dpo import Qwen2VLGRPOTrainer, import_trl

    trl = import_trl()
    processor = AutoProcessor.from_pretrained(model_dir, padding_side="left")
    recorder = Recorder(SPRReward(scorer, tokenizer=processor))
    train = datasets.load_dataset("parquet", data_files=str(parquet), split="train", cache_dir=str(out / "cache"))
    args = trl.GRPOConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=2,
        num_generations=2,
        max_prompt_length=None,
        max_completion_length=max_completion_length,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        report_to="none",
        seed=0,
    )
    trainer = Qwen2VLGRPOTrainer(
        str(model_dir), reward_funcs=[recorder], args=args, train_dataset=train, processing_class=processor
    )
    trainer.train()
    return trainer, recorder


def _check_rewards_are_the_scorers(recorder: Recorder, scorer: CandidateScorer) -> list[str]:
    """Every reward TRL received equals the scorer's score (or the floor) of the completion decoded from its ids."""
    texts = []
    for kwargs, out in recorder.calls:
        decoded = recorder.reward.completion_texts(kwargs["completions"], kwargs["completion_ids"])
        regions = [Region.from_dict(r) for r in kwargs["region"]]
        for text, reg, got in zip(decoded, regions, out):
            (scored,) = scorer.score([(reg, Candidate(reg.region_id, "x", 0, text))])
            assert got == pytest.approx(MALFORMED_REWARD if malformed_reason(text, scored) else scored.score)
        texts += decoded
    return texts


def test_grpo_trainer_runs_with_the_spr_reward_on_the_tiny_model(prompts_parquet, tiny_qwen2vl, scorer, tmp_path):
    trainer, recorder = _run_grpo(tiny_qwen2vl, prompts_parquet, tmp_path, scorer)
    logs = [e for e in trainer.state.log_history if "rewards/spr_reward/mean" in e]
    assert [e["step"] for e in logs] == [1, 2]
    assert len(recorder.calls) == 2 and all(len(out) == 2 for _, out in recorder.calls)
    media = {trainer.model.config.image_token_id, trainer.model.config.video_token_id}
    assert media <= set(trainer.generation_config.suppress_tokens)  # a sampled <|image_pad|> would break the forward
    rewards = [r for _, out in recorder.calls for r in out]
    floor = -ScoringConfig().hallucination_penalty  # a well-formed answer naming only absent objects
    assert all(r == MALFORMED_REWARD or floor <= r <= 1.0 for r in rewards)
    assert logs[0]["rewards/spr_reward/mean"] == pytest.approx(sum(recorder.calls[0][1]) / 2, abs=1e-5)
    _check_rewards_are_the_scorers(recorder, scorer)


@pytest.mark.slow  # trains (TRL example script in a subprocess)
def test_grpo_example_script_trains_a_lora_adapter(prompts_parquet, tiny_qwen2vl, synthetic_scenes, tmp_path):
    out = tmp_path / "grpo"
    cmd = [
        sys.executable,
        str(ROOT / "recipes/trl_grpo_qwen2vl.py"),
        "--model",
        str(tiny_qwen2vl),
        "--data",
        str(prompts_parquet),
    ]
    cmd += ["--output-dir", str(out), "--max-steps", "2", "--batch-size", "2", "--num-generations", "2", "--grad-accum", "1"]
    cmd += ["--max-completion-length", "16", "--logging-steps", "1", "--cpu", "--annotations", str(synthetic_scenes)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "adapter_model.safetensors").is_file()
    log = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "reward" in e]
    assert [e["step"] for e in log] == [1, 2] and all("rewards/spr_reward/mean" in e and "kl" in e for e in log)


@pytest.mark.slow
def test_grpo_rewards_real_grounded_samples_of_the_warmed_up_demo_model(demo_run, scorer, tmp_path):
    """The demo's warmed-up tiny model writes grounded descriptions: its sampled completions reach the reward with
    their boxes (decoded from the ids), and every reward is the pair builder's score of that text."""
    out, _ = demo_run
    regions = out / "work" / "regions.jsonl"
    parquet = tmp_path / "demo_prompts.parquet"
    cmd = ["export-grpo", "--regions", regions, "--out", parquet, "--max-regions", "4"]
    proc = run_spr(*cmd, "--image-max-pixels", FRAME, *_images(regions))
    assert proc.returncode == 0, proc.stderr
    _, recorder = _run_grpo(out / "tiny-qwen2vl-warm", parquet, tmp_path, scorer, steps=2, max_completion_length=96)
    texts = _check_rewards_are_the_scorers(recorder, scorer)
    width_height = [(r["width"], r["height"]) for kwargs, _ in recorder.calls for r in kwargs["region"]]
    boxed = [t for t, (w, h) in zip(texts, width_height) if FMT.parse(t, w, h).boxes]
    assert boxed, texts  # real samples with parsed boxes reached the reward
    trl_texts = [c[0]["content"] for kwargs, _ in recorder.calls for c in kwargs["completions"]]
    assert not any(FMT.parse(t, w, h).boxes for t, (w, h) in zip(trl_texts, width_height))  # TRL's own texts lost them


def test_building_the_cli_parser_imports_no_torch():
    """`spr --help` and every one-line error stay fast: the new subcommands import their modules lazily."""
    code = "import sys; from spr_plugin.cli import build_parser; build_parser(); "
    code += "print(sorted({'torch', 'trl', 'datasets'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
