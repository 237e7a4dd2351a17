"""The CLIP semantic scorer (crop + local term) on a tiny random CLIP, and ``clip+text`` with real MiniLM.

The tiny CLIP's scores mean nothing; these tests check the code paths: batching, the local term's use
of the full image, long texts, configuration errors and record round trips.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import region
from spr_plugin.core.errors import ConfigError
from spr_plugin.core.records import AnnotatedObject, Box, Region, SemanticScore
from spr_plugin.scoring.clip_semantic import ClipSemanticScorer, chunk_words, pad_to_square, region_patch_mask
from spr_plugin.scoring.factory import MeanSemanticScorer, load_semantic_scorer
from spr_plugin.scoring.semantic import TextSemanticScorer
from spr_plugin.settings import ScoringConfig

LONG = " ".join(["a red circle next to a blue square above the green star"] * 12)  # about 600 characters


def _image(path, seed, size=(96, 64)):
    rng = np.random.RandomState(seed)
    Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype("uint8")).save(path)
    return str(path)


def _region(path, box, rid="r", size=(96, 64)):
    b = Box(*box)
    return Region(rid, 1, path, size[0], size[1], b, (AnnotatedObject(1, "red circle", b),), 1)


@pytest.fixture(scope="module")
def clip(tiny_clip):
    return ClipSemanticScorer.load(str(tiny_clip))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_images")
    return [_image(root / "a.png", 0), _image(root / "b.png", 1, (50, 80))]


def test_local_term_over_the_whole_image_is_clips_own_image_embedding(clip, images):
    """The region-restricted last layer reduces to CLIP's pooled embedding when the region is everything."""
    im = Image.open(images[0]).convert("RGB")
    side = max(im.size)
    whole = Box(0, 0, side, side)  # every patch of the padded square
    local = clip.embed_local({"k": im}, {"k": [whole]})[("k", whole)]
    pixels = clip._processor.image_processor(images=[pad_to_square(im)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = clip._clip.get_image_features(pixel_values=pixels)
    ref = getattr(ref, "pooler_output", ref)[0]
    ref = (ref / ref.norm()).numpy()
    assert np.allclose(local, ref, atol=1e-5)


def test_batch_equals_one_by_one(clip, images):
    a, b = images
    items = [
        (_region(a, (10, 5, 40, 30)), "a red circle", ["red circle"]),
        (_region(a, (50, 20, 90, 60), "r2"), "a blue square above a star", ["blue square"]),
        (_region(b, (0, 0, 30, 40), "r3", (50, 80)), "a red circle", []),
        (_region(b, (5, 30, 45, 78), "r4", (50, 80)), LONG, []),
        (_region(a, (10, 5, 40, 30)), "", []),
    ]
    batched = clip.score_batch(items)
    single = [clip.score_batch([it])[0] for it in items]
    for x, y in zip(batched, single):
        assert x.score == pytest.approx(y.score, abs=1e-5)
        for k in ("clip_crop", "clip_local"):
            assert x.parts[k] == pytest.approx(y.parts[k], abs=1e-5)
    assert batched[-1].score == 0.0  # an empty description
    assert any(s.score > 0 for s in batched)  # the tiny CLIP's cosines are not all clamped away


def test_one_encode_call_for_crops_and_one_for_texts(clip, images, monkeypatch):
    """A spy around the real ``encode``: the batch costs two calls whatever its size."""
    calls = []
    real = clip.model.encode

    def spy(inputs, **kwargs):
        calls.append(len(inputs))
        return real(inputs, **kwargs)

    monkeypatch.setattr(clip.model, "encode", spy)
    r = _region(images[0], (10, 5, 40, 30))
    clip.score_batch([(r, "a red circle", []), (r, "a red circle", []), (r, "two squares", []), (r, LONG, [])])
    assert len(calls) == 2
    assert calls[0] == 1  # one unique crop
    assert calls[1] == 2 + len(clip.text_windows(LONG))  # unique text windows


def test_local_term_sees_outside_the_region_and_the_crop_term_does_not(clip, tmp_path):
    """Changing pixels outside the region changes only the local (full-image) term."""
    box = (20, 10, 60, 50)
    base = _image(tmp_path / "base.png", 3)
    arr = np.array(Image.open(base))
    arr[:, 70:] = 255 - arr[:, 70:]  # outside the region's columns
    arr[55:, :] = 0  # and below it
    other = tmp_path / "other.png"
    Image.fromarray(arr).save(other)
    r1, r2 = _region(base, box), _region(str(other), box)
    crops = clip.embed_crops({"1": Image.open(base).crop(box), "2": Image.open(other).crop(box)})
    assert np.allclose(crops["1"], crops["2"])
    b = Box(*box)
    l1 = clip.embed_local({"1": Image.open(base)}, {"1": [b]})[("1", b)]
    l2 = clip.embed_local({"2": Image.open(other)}, {"2": [b]})[("2", b)]
    assert not np.allclose(l1, l2, atol=1e-4)
    s1, s2 = clip.score_batch([(r1, "a red circle", []), (r2, "a red circle", [])])
    assert s1.parts["clip_crop"] == pytest.approx(s2.parts["clip_crop"], abs=1e-6)


def test_local_term_depends_on_the_region_box(clip, images):
    im = Image.open(images[0]).convert("RGB")
    left, right = Box(0, 0, 30, 30), Box(60, 30, 96, 64)
    emb = clip.embed_local({"k": im}, {"k": [left, right]})
    assert not np.allclose(emb[("k", left)], emb[("k", right)], atol=1e-4)


def test_region_patch_mask_selects_overlapping_patches():
    # 64 px square, 4x4 grid of 8 px patches at image_size 32 -> scale 0.5
    mask = region_patch_mask(Box(0, 0, 16, 16), 64, 32, 8).reshape(4, 4)
    assert mask[0, 0] and mask.sum() == 1
    assert region_patch_mask(Box(0, 0, 64, 64), 64, 32, 8).all()
    assert region_patch_mask(Box(30, 30, 30.5, 30.5), 64, 32, 8).sum() == 1  # a tiny box still gets a patch


def test_long_texts_are_chunked_to_fit_and_averaged(clip):
    windows = clip.text_windows(LONG)
    assert len(windows) > 1 and " ".join(windows) == LONG
    tok = clip._processor.tokenizer
    assert all(len(tok(w)["input_ids"]) <= 77 for w in windows)
    before = clip.stats["texts_over_token_limit"]
    emb = clip.embed_texts([LONG])[LONG]
    assert clip.stats["texts_over_token_limit"] == before + 1
    parts = clip._encode(windows)
    mean = parts.mean(axis=0)
    assert np.allclose(emb, mean / np.linalg.norm(mean), atol=1e-5)


def test_a_word_longer_than_the_context_is_split_by_tokens(clip):
    """Degenerate model output (numbers with no spaces) must still fit CLIP's 77 positions."""
    text = "a red circle," + ",".join(str(i) for i in range(100, 160)) + " next"
    windows = clip.text_windows(text)
    tok = clip._processor.tokenizer
    assert len(windows) > 2 and all(len(tok(w)["input_ids"]) <= 77 for w in windows)
    assert windows[0] == "a red" and windows[-1].endswith("next")


def test_truncate_mode_keeps_the_first_window(tiny_clip):
    trunc = ClipSemanticScorer.load(str(tiny_clip), long_text="truncate")
    windows = trunc.text_windows(LONG)
    assert len(windows) == 1 and LONG.startswith(windows[0])
    assert np.allclose(trunc.embed_texts([LONG])[LONG], trunc._encode(windows)[0], atol=1e-5)
    assert trunc.stats["texts_over_token_limit"] == 1


def test_chunk_words_is_greedy_and_keeps_order():
    assert chunk_words(["a", "b", "c", "d"], [2, 2, 2, 5], 4) == [["a", "b"], ["c"], ["d"]]
    assert chunk_words([], [], 4) == []


def test_clip_path_that_does_not_exist_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load CLIP model"):
        ClipSemanticScorer.load(str(tmp_path / "no-such-clip"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"semantic": "clip"}, "needs --clip-model"),
        ({"semantic": "clip+text"}, "needs --clip-model"),
        ({"semantic": "blip"}, "unknown semantic scorer"),
        ({"semantic": "clip", "clip_model": "x", "clip_long_text": "drop"}, "long-text mode"),
        ({"grounder_phrases": "some"}, "grounder phrase mode"),
        ({"grounder_box_threshold": 2.0}, "box threshold"),
    ],
)
def test_bad_semantic_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ScoringConfig(**kwargs)


def test_semantic_score_round_trips_and_reads_old_records():
    s = SemanticScore(0.4, {"clip_crop": 0.3, "clip_local": 0.5}, "clip")
    assert SemanticScore.from_dict(s.to_dict()) == s
    old = {"score": 0.5, "text_region": 0.6, "phrase_objects": 0.4, "scorer": "text"}
    t = SemanticScore.from_dict(old)
    assert t.to_dict() == old and t.text_region == 0.6 and t.phrase_objects == 0.4


@pytest.fixture(scope="module")
def clip_plus_text(tiny_clip):
    cfg = ScoringConfig(semantic="clip+text", clip_model=str(tiny_clip))
    return load_semantic_scorer(cfg)


def test_clip_plus_text_is_the_mean_of_both_with_all_parts(clip_plus_text, images):
    assert isinstance(clip_plus_text, MeanSemanticScorer)
    clip_s, text_s = clip_plus_text.scorers
    assert isinstance(clip_s, ClipSemanticScorer) and isinstance(text_s, TextSemanticScorer)
    items = [(_region(images[0], (10, 5, 40, 30)), "a red circle on grass", ["red circle"])]
    (both,) = clip_plus_text.score_batch(items)
    (c,), (t,) = clip_s.score_batch(items), text_s.score_batch(items)
    assert both.score == pytest.approx((c.score + t.score) / 2)
    assert set(both.parts) == {"clip_crop", "clip_local", "text_region", "phrase_objects"}
    assert both.scorer == "clip+text"


def test_clip_plus_text_ranks_present_objects_above_absent_ones(clip_plus_text, images):
    """The real MiniLM half carries the signal; the random CLIP half must not drown it."""
    r = region(path=images[0], cats=("dog", "frisbee"), boxes=((5, 5, 40, 40), (50, 10, 90, 60)))
    r = Region(r.region_id, r.image_id, r.image_path, 96, 64, r.box, r.objects, r.seed_ann_id)
    good = ("A dog jumps to catch a frisbee.", ["dog", "frisbee"])
    bad = ("A laptop sits on an office desk.", ["laptop", "desk"])
    s_good, s_bad = clip_plus_text.score_batch([(r, *good), (r, *bad)])
    assert s_good.score > s_bad.score
    assert s_good.parts["text_region"] > s_bad.parts["text_region"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--semantic", "clip"], "needs --clip-model"),
        (["--semantic", "clip", "--clip-model", "/no/such/clip"], "cannot load CLIP model '/no/such/clip'"),
        (["--grounder", "/no/such/gdino"], "does not exist"),
    ],
)
def test_cli_scorer_mistakes_are_one_line_errors(flags, message, tmp_path, capsys):
    from PIL import Image

    from spr_plugin import cli

    Image.new("RGB", (20, 10)).save(tmp_path / "x.png")  # regions are checked first (their images under --images)
    obj = {"ann_id": 1, "category": "cat", "box": [1, 1, 5, 5]}
    region = {"region_id": "r", "image_id": 1, "image_path": str(tmp_path / "x.png"), "width": 20, "height": 10,
              "box": [1, 1, 9, 9], "objects": [obj], "seed_ann_id": 1}  # fmt: skip
    (tmp_path / "r.jsonl").write_text(json.dumps(region) + "\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"region_id": "r", "text": "a cat"}) + "\n")  # inputs are checked first
    argv = ["pair", "--regions", str(tmp_path / "r.jsonl"), "--candidates", str(tmp_path / "c.jsonl"), "--images", str(tmp_path)]
    assert cli.main([*argv, "--out", str(tmp_path / "p.jsonl"), *flags]) == 2
    err = capsys.readouterr().err
    assert "spr pair: error:" in err and message in err and "Traceback" not in err
