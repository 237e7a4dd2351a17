"""Records and statistics written from their fields (spr_plugin/core/serialize.py): the same keys, in the same
order, optional keys left out while they hold their default, exactly as the files written before."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace

import pytest

from spr_plugin.core.records import (
    AnnotatedObject,
    Box,
    Candidate,
    LocalizationScore,
    Match,
    PreferencePair,
    Region,
    ScoredCandidate,
    SemanticScore,
)
from spr_plugin.core.sanitize import SanitizeStats
from spr_plugin.core.serialize import field_dict, plain
from spr_plugin.regions.sampling import RegionStats
from spr_plugin.scoring.stage import PairStats


def _region(**extra) -> Region:
    obj = AnnotatedObject(7, "cat", Box(1, 2, 30, 40))
    return Region("3_0", 3, "/img/3.jpg", 64, 48, Box(1, 2, 30, 40), (obj,), 7, **extra)


def _scored(**extra) -> ScoredCandidate:
    loc = LocalizationScore(0.5, "iou", 1, 2, (Match(0, 1, 0.123456),), n_grounded=1)
    return ScoredCandidate(
        Candidate("3_0", "box_text", 1, "a cat", "tiny", 0.7, 5), True, 0.4, SemanticScore(0.3, {"a": 0.5}, "text"), loc,
        {"broken": 1}, **extra,
    )  # fmt: skip


def test_records_write_their_fields_in_order_and_leave_defaults_out():
    region = _region()
    assert json.dumps(region.to_dict()) == json.dumps(
        {
            "region_id": "3_0", "image_id": 3, "image_path": "/img/3.jpg", "width": 64, "height": 48,
            "box": [1, 2, 30, 40], "objects": [{"ann_id": 7, "category": "cat", "box": [1, 2, 30, 40]}],
            "seed_ann_id": 7,
        }
    )  # fmt: skip
    ignored = AnnotatedObject(9, "person", Box(0, 0, 5, 5), ("human",), crowd=True)
    full = _region(image_root="/img", ignored=(ignored,), not_exhaustive=("dog",), absent=("bus",), in_image=("cat",))
    d = full.to_dict()
    assert list(d)[-5:] == ["image_root", "ignored", "not_exhaustive", "absent", "in_image"]
    assert d["ignored"] == [{"ann_id": 9, "category": "person", "box": [0, 0, 5, 5], "synonyms": ["human"], "crowd": True}]
    assert Region.from_dict(json.loads(json.dumps(d))) == full and Region.from_dict(region.to_dict()) == region

    sc = _scored()
    d = sc.to_dict()
    assert list(d) == ["candidate", "refined", "score", "semantic", "localization", "parse_dropped"]
    assert d["candidate"] == {
        "region_id": "3_0", "variant": "box_text", "sample_idx": 1, "text": "a cat", "generator": "tiny",
        "temperature": 0.7, "seed": 5,
    }  # fmt: skip
    assert d["localization"] == {
        "score": 0.5,
        "metric": "iou",
        "n_gt": 1,
        "n_pred": 2,
        "matches": [[0, 1, 0.1235]],
        "n_grounded": 1,
    }
    assert d["semantic"] == {"score": 0.3, "a": 0.5, "scorer": "text"}
    more = _scored(norm_parts={"sem": 0.1}, refinement={"policy": "correct"}, penalty=0.2)
    assert list(more.to_dict())[-3:] == ["norm_parts", "refinement", "penalty"]
    assert LocalizationScore(0.5, "iou", 1, 2, (), n_neutral=3).to_dict()["n_neutral"] == 3
    pair = PreferencePair(region, replace(more, score=0.9), sc)
    assert list(pair.to_dict()) == ["region", "chosen", "rejected", "margin"] and pair.to_dict()["margin"] == pytest.approx(0.5)


def test_stats_keep_their_summary_key_names():
    stats = RegionStats(images_seen=2, regions=1, skipped=Counter(tiny=1), examples={"tiny": "a.jpg"}, boxes_clamped=3)
    assert stats.to_dict() == {
        "images_seen": 2, "regions": 1, "skipped": {"tiny": 1}, "skipped_examples": {"tiny": "a.jpg"},
        "boxes_clamped_to_image": 3, "ignored_objects": {}, "loader": {},
    }  # fmt: skip
    assert type(stats.to_dict()["skipped"]) is dict  # a Counter is written as a plain dict
    s = SanitizeStats()
    s.add("candidate", 2)
    assert s.to_dict() == {"tokens_removed": {"candidate": 2}, "texts_changed": {"candidate": 1}}
    keys = list(PairStats(boxes_snapped=1).to_dict())
    assert keys[:7] == ["regions", "candidates", "candidates_without_region", "candidates_without_boxes",
                        "candidates_over_limit", "boxes_dropped_by_parser", "boxes_snapped_by_refinement"]  # fmt: skip
    assert keys[-6:] == ["debris_removed_by_refinement", "pairs", "pairs_skipped", "lengths", "pair_quality", "warnings"]


@dataclass
class _Toy:
    name: str
    count: int = 0
    tags: tuple[str, ...] = ()
    seen: Counter = field(default_factory=Counter)
    box: Box | None = None


def test_field_dict_hooks():
    toy = _Toy("a", 2, ("x",), Counter(k=1), Box(0, 0, 1, 1))
    assert field_dict(toy) == {"name": "a", "count": 2, "tags": ["x"], "seen": {"k": 1}, "box": [0, 0, 1, 1]}
    assert field_dict(_Toy("a"), omit_default=("count", "tags", "seen", "box")) == {"name": "a"}
    assert field_dict(toy, keys={"count": "n"}, skip=("seen", "box"), dump={"tags": "|".join}) == {
        "name": "a",
        "n": 2,
        "tags": "x",
    }
    with pytest.raises(TypeError, match="no default"):
        field_dict(toy, omit_default=("name",))
    assert plain((1, [Box(0, 0, 1, 2)], {"k": (None, "s")})) == [1, [[0, 0, 1, 2]], {"k": [None, "s"]}]


@pytest.mark.parametrize(
    "data, strict, message",
    [
        (None, True, "thing not found: "),
        (b"\xff{}", True, r"x\.json: not valid UTF-8 \(byte 0\); hint$"),
        (b'{"a": [1,', True, r"x\.json: not valid JSON \(Expecting value at line 1, column 10\); hint$"),
        (b'{"a": NaN}', True, r"x\.json: not valid JSON \(NaN is not a JSON number\); hint$"),
        (b"[" * 100_000 + b"]" * 100_000, True, r"x\.json: nested too deeply to be a thing; hint$"),
    ],
)
def test_read_json_names_the_file_and_the_fault_in_one_line(tmp_path, data, strict, message):
    from spr_plugin.core.errors import SPRError
    from spr_plugin.core.jsonl import read_json

    path = tmp_path / "x.json"
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(SPRError, match=message):
        read_json(path, "thing", strict=strict, hint="; hint")


def test_read_json_reads_json_and_nan_only_when_not_strict(tmp_path):
    from spr_plugin.core.jsonl import read_json

    path = tmp_path / "x.json"
    path.write_text('{"a": [1, 2], "b": NaN}')
    d = read_json(path, "thing", strict=False)
    assert d["a"] == [1, 2] and d["b"] != d["b"]
