"""No silent drops, right blame (issue #18, item 7): every dropped line or reply is counted in the summary and
named; an invalid number, device, model or adapter is refused in one line before any work, and the error
blames what is wrong (the flag), never the server.
"""

from __future__ import annotations

import json
from pathlib import Path

from hostile_cases import HostileCase
from hostile_cases._bounded_util import GROUNDED, chat_reply, first_region, generate, regions_file, send_json, server, spr

_SECOND = "<|object_ref_start|>blue square<|object_ref_end|><|box_start|>(300,300),(500,500)<|box_end|>"


def _candidates(path: Path, region_id: str, texts: list[str], torn: str = "") -> Path:
    rows = [{"region_id": region_id, "variant": "box_text", "sample_idx": i, "text": t} for i, t in enumerate(texts)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn, encoding="utf-8")
    return path


def _pair(tmp: Path, *candidate_files: Path) -> tuple[dict, Path]:
    out = tmp / "pairs.jsonl"
    run = spr("pair", "--regions", tmp / "regions.jsonl", "--candidates", *candidate_files, "--out", out)
    assert run.rc == 0, run.err[-300:]
    return json.loads(run.out), out


_TEXTS = [f"The region holds {GROUNDED}.", f"The region holds {GROUNDED} and {_SECOND}.", "A region with shapes."]


def torn_last_line_of_candidates(tmp: Path) -> None:
    """A candidates file whose last line was cut off: skipped, counted and named in the pair summary."""
    rid = first_region(regions_file(tmp))["region_id"]
    cands = _candidates(tmp / "cands.jsonl", rid, _TEXTS, torn='{"region_id": "' + rid + '", "variant": "box_te')
    summary, _ = _pair(tmp, cands)
    read = summary["candidate_files"]
    assert read["torn_last_lines"] == 1 and str(cands) in read["torn"][0], read


def torn_last_line_of_pairs(tmp: Path) -> None:
    """A pairs file whose last line was cut off: spr export says it skipped it, naming file and line."""
    rid = first_region(regions_file(tmp))["region_id"]
    _, pairs = _pair(tmp, _candidates(tmp / "cands.jsonl", rid, _TEXTS))
    whole = pairs.read_text(encoding="utf-8")
    assert whole.strip(), "no pair to tear"
    pairs.write_text(whole + whole[: len(whole) // 2], encoding="utf-8")
    run = spr("export", "--pairs", pairs, "--dataset-dir", tmp / "data", "--name", "torn", "--images", tmp / "scenes" / "images")
    assert run.rc == 0, run.err[-300:]
    assert f"skipped 1 line of {pairs}" in run.out and f"{pairs}:2: torn last line" in run.out, run.out


def conflicting_duplicate_keys(tmp: Path) -> None:
    """Two files give one candidate key two different texts: the first is kept, the conflict counted and named."""
    rid = first_region(regions_file(tmp))["region_id"]
    a = _candidates(tmp / "a.jsonl", rid, _TEXTS)
    b = _candidates(tmp / "b.jsonl", rid, [_TEXTS[0], "Something else entirely."])
    summary, _ = _pair(tmp, a, b)
    read = summary["candidate_files"]
    assert read["duplicates"] == 2 and read["conflicting_duplicates"] == 1, read
    assert str(b) in read["conflicts"][0] and rid in read["conflicts"][0], read


def empty_choices_reply(tmp: Path) -> None:
    """A server answering with an empty ``choices`` list: counted as empty_choices, the prompts as failed."""
    with server(lambda h, r: send_json(h, {**chat_reply(0), "choices": []})) as srv:
        run, _ = generate(tmp, srv)
    assert run.rc == 0, run.err[-300:]
    stats = json.loads(run.out)
    assert stats["generator_failures"].get("empty_choices") == stats["prompts"] > 0, stats
    assert stats["skipped"].get("generation_failed") == 2 * stats["prompts"], stats


def fewer_choices_than_asked(tmp: Path) -> None:
    """A server that ignores ``n`` and always answers one choice: asked again, and a short prompt is counted."""
    with server(lambda h, r: send_json(h, chat_reply(1))) as srv:
        run, out = generate(tmp, srv, "--num-samples", "6")
    assert run.rc == 0, run.err[-300:]
    stats = json.loads(run.out)
    assert stats["generator_failures"].get("fewer_choices_than_asked") == stats["prompts"] > 0, stats


def _refused(*args: str | Path, needles: tuple[str, ...] = ()) -> None:
    """``spr ARGS`` ends in one line naming the flag, within seconds (before any model or server is touched)."""
    run = spr(*args)
    line = run.one_line_error(*needles)
    assert "server" not in line.split(": error: ", 1)[1], f"blames the server: {line}"
    assert run.seconds < 30, f"took {run.seconds:.1f} s"


def _generate_args(tmp: Path, *extra: str) -> list[str | Path]:
    regions = regions_file(tmp)
    return [
        "generate", "--regions", regions, "--out", tmp / "c.jsonl", "--backend", "openai",
        "--base-url", "http://127.0.0.1:9/v1", "--served-model", "m", "--images", tmp / "scenes" / "images", *extra,
    ]  # fmt: skip


def empty_variants(tmp: Path) -> None:
    _refused(*_generate_args(tmp, "--variants", ""), needles=("--variants",))


def nan_temperature(tmp: Path) -> None:
    _refused(*_generate_args(tmp, "--temperature", "nan"), needles=("temperature", "finite"))


def nan_request_timeout(tmp: Path) -> None:
    _refused(*_generate_args(tmp, "--request-timeout", "nan"), needles=("--request-timeout", "finite"))


def nan_min_margin(tmp: Path) -> None:
    regions = regions_file(tmp)
    cands = _candidates(tmp / "c.jsonl", first_region(regions)["region_id"], _TEXTS)
    _refused("pair", "--regions", regions, "--candidates", cands, "--out", tmp / "p.jsonl", "--min-margin", "nan",
             needles=("--min-margin", "finite"))  # fmt: skip


def negative_limit(tmp: Path) -> None:
    ann = tmp / "rec.jsonl"
    ann.write_text("", encoding="utf-8")
    _refused("eval", "rec", "--annotations", ann, "--model", tmp / "m", "--out", tmp / "r.json", "--limit", "-1",
             needles=("--limit",))  # fmt: skip
    _refused("eval", "region", "--regions", ann, "--model", tmp / "m", "--out", tmp / "r.json", "--limit", "0",
             needles=("--limit",))  # fmt: skip


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def missing_cuda_device(tmp: Path) -> None:
    """``--device cuda:7`` (generation and evaluation): one line before the model loads."""
    device = "cuda:7" if _has_cuda() else "cuda"
    regions = regions_file(tmp)
    _refused("generate", "--regions", regions, "--out", tmp / "c.jsonl", "--model", tmp / "no-model", "--device", device,
             needles=("--device", device))  # fmt: skip
    _refused("eval", "rec", "--annotations", regions, "--model", tmp / "no-model", "--out", tmp / "r.json",
             "--device", "cuda:7", needles=("--device", "cuda:7"))  # fmt: skip


def unknown_text_model(tmp: Path) -> None:
    """An unknown --text-model: one line before any scoring (pair) or any sampling and generation (build)."""
    regions = regions_file(tmp)
    cands = _candidates(tmp / "c.jsonl", first_region(regions)["region_id"], _TEXTS)
    missing = str(tmp / "no-such-text-model")
    _refused("pair", "--regions", regions, "--candidates", cands, "--out", tmp / "p.jsonl", "--text-model", missing,
             needles=("--text-model", missing))  # fmt: skip
    ann, images = tmp / "scenes" / "instances.json", tmp / "scenes" / "images"
    _refused("build", "--annotations", ann, "--images", images, "--candidates", cands, "--work-dir", tmp / "w",
             "--dataset-dir", tmp / "data", "--text-model", missing, needles=("--text-model",))  # fmt: skip
    assert not (tmp / "w" / "regions.jsonl").exists(), "the build sampled regions before refusing the text model"


def missing_adapter(tmp: Path) -> None:
    """An adapter path that is not an adapter: one line naming it, before the (here missing) base model loads."""
    ann = tmp / "rec.jsonl"
    ann.write_text("", encoding="utf-8")
    not_adapter = tmp / "not-an-adapter"
    not_adapter.mkdir()
    for adapter, needle in ((tmp / "gone", "not found"), (not_adapter, "no adapter_config.json")):
        _refused("eval", "rec", "--annotations", ann, "--model", tmp / "no-model", "--adapter", adapter,
                 "--out", tmp / "r.json", needles=("--adapter", needle))  # fmt: skip


CASES = [
    HostileCase("drops", "torn_last_line_of_candidates", torn_last_line_of_candidates),
    HostileCase("drops", "torn_last_line_of_pairs", torn_last_line_of_pairs),
    HostileCase("drops", "conflicting_duplicate_keys", conflicting_duplicate_keys),
    HostileCase("drops", "empty_choices_reply", empty_choices_reply),
    HostileCase("drops", "fewer_choices_than_asked", fewer_choices_than_asked),
    HostileCase("drops", "empty_variants", empty_variants),
    HostileCase("drops", "nan_temperature", nan_temperature),
    HostileCase("drops", "nan_request_timeout", nan_request_timeout),
    HostileCase("drops", "nan_min_margin", nan_min_margin),
    HostileCase("drops", "negative_limit", negative_limit),
    HostileCase("drops", "missing_cuda_device", missing_cuda_device),
    HostileCase("drops", "unknown_text_model", unknown_text_model),
    HostileCase("drops", "missing_adapter", missing_adapter),
]
