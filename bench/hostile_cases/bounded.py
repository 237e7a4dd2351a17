"""Bounded work (issue #18, item 6): a server cannot hold a request past its deadline or redirect the prompts
elsewhere, a recipe cannot expand without bound, a candidate cannot hold scoring for minutes.

Each case runs spr in process against real files and, for the server cases, a real HTTP server on 127.0.0.1
whose loops stop by themselves; each takes a few seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from hostile_cases import HostileCase
from hostile_cases._bounded_util import GROUNDED, chat_reply, first_region, generate, regions_file, send_json, server, spr

#: Seconds --request-timeout is set to in the server cases, and the overrun allowed on top of it (the server
#: notices a hang-up at its next write or two, 0.3 s apart).
TIMEOUT, SLACK = 2.0, 1.5


def _trickle(chunks: list[bytes], held: list[float]):
    """A behaviour writing ``chunks`` one every 0.3 s (at most 40: it stops by itself within 12 s); ``held``
    gets how long the client kept the request open (until a write fails: the client hung up)."""

    def behaviour(handler, request) -> None:
        start = time.monotonic()
        for chunk in chunks[:40]:
            try:
                handler.wfile.write(chunk)
                handler.wfile.flush()
            except OSError:
                held.append(time.monotonic() - start)
                return
            time.sleep(0.3)
        handler.close_connection = True

    return behaviour


def _check_held(run, held: list[float]) -> None:
    run.one_line_error("rerun the same command to resume")
    for _ in range(20):  # the server notices the hang-up at its next write or two
        if held:
            break
        time.sleep(0.1)
    assert held, "the client read the whole trickle (12 s) instead of hanging up at --request-timeout"
    assert max(held) < TIMEOUT + SLACK, f"a request was held {max(held):.1f} s with --request-timeout {TIMEOUT}"


def trickled_reply(tmp: Path) -> None:
    """A server that sends its reply one byte every 0.3 s: the request ends at --request-timeout, in one line."""
    body = json.dumps(chat_reply(2)).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    held: list[float] = []
    with server(_trickle([head, *(body[i : i + 1] for i in range(len(body)))], held)) as srv:
        run, _ = generate(tmp, srv, "--request-timeout", str(TIMEOUT))
        _check_held(run, held)


def trickled_headers(tmp: Path) -> None:
    """A server that never finishes its headers (a byte every 0.3 s): the same deadline holds."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: " + b"a" * 60
    held: list[float] = []
    with server(_trickle([head[i : i + 1] for i in range(len(head))], held)) as srv:
        run, _ = generate(tmp, srv, "--request-timeout", str(TIMEOUT))
        _check_held(run, held)


def cross_origin_redirect(tmp: Path) -> None:
    """A 307 to another origin: never followed (the other server gets nothing), one line naming the redirect."""
    with server(lambda h, r: send_json(h, chat_reply(r.get("n", 1)))) as elsewhere:
        target = f"http://127.0.0.1:{elsewhere.server_address[1]}/v1/chat/completions"

        def redirect(handler, request) -> None:
            handler.send_response(307)
            handler.send_header("Location", target)
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        with server(redirect) as srv:
            run, out = generate(tmp, srv)
        assert elsewhere.posts == 0, "the prompts were sent to another origin"
    run.one_line_error("redirect to another origin")
    assert not out.exists() or not out.read_text().strip()


def same_origin_redirect_is_followed(tmp: Path) -> None:
    """A redirect within --base-url's origin is still followed (servers behind a path rewrite keep working)."""

    def behaviour(handler, request) -> None:
        if handler.path.endswith("/moved"):
            return send_json(handler, chat_reply(request.get("n", 1)))
        handler.send_response(307)
        handler.send_header("Location", "/v1/chat/completions/moved")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    with server(behaviour) as srv:
        run, out = generate(tmp, srv)
    assert run.rc == 0, run.err[-300:]
    assert len(out.read_text().splitlines()) == 2 * len(regions_lines(tmp))


def regions_lines(tmp: Path) -> list[str]:
    return (tmp / "regions.jsonl").read_text(encoding="utf-8").splitlines()


def alias_bomb_recipe(tmp: Path) -> None:
    """A recipe whose aliases expand to 10^10 values: refused at once, in one short line."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    lines += ["image_max_pixels: *a9", "template: qwen2_vl", "dataset: spr_qwen2vl"]
    recipe = tmp / "bomb.yaml"
    recipe.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = spr("check-recipe", recipe)
    run.one_line_error("alias")
    assert run.seconds < 20, f"took {run.seconds:.1f} s"  # a start-up of spr is 2-3 s; a bomb runs for minutes


def huge_yaml_line(tmp: Path) -> None:
    """A recipe holding one long unparsable line: the error quotes a short piece of it, never the line; a
    multi-MB recipe is refused by its size before parsing."""
    recipe = tmp / "long.yaml"
    recipe.write_text("template: qwen2_vl\nimage_max_pixels: [" + "1, " * 80_000 + "\n", encoding="utf-8")
    run = spr("check-recipe", recipe)
    line = run.one_line_error("not valid YAML")
    assert len(line) < 400, f"error line of {len(line)} characters"
    recipe.write_text("template: qwen2_vl\nimage_max_pixels: [" + "1, " * 1_000_000 + "]\n", encoding="utf-8")
    run = spr("check-recipe", recipe)
    run.one_line_error("too large")
    assert run.seconds < 20, f"took {run.seconds:.1f} s"  # a start-up of spr is 2-3 s; a bomb runs for minutes


def _pair(tmp: Path, texts: list[str]) -> tuple[dict, Path]:
    regions = regions_file(tmp)
    region = first_region(regions)
    cands = tmp / "cands.jsonl"
    rows = [{"region_id": region["region_id"], "variant": "box_text", "sample_idx": i, "text": t} for i, t in enumerate(texts)]
    cands.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp / "pairs.jsonl"
    run = spr("pair", "--regions", regions, "--candidates", cands, "--out", out)
    assert run.rc in (0, 1), run.err[-300:]
    return json.loads(run.out), out


def huge_candidate(tmp: Path) -> None:
    """A 2.4 MB candidate with 20,000 phrases: left out before scoring and counted, in seconds."""
    started = time.monotonic()
    unit = "<|object_ref_start|>a small red circle near the left edge<|object_ref_end|><|box_start|>(10,10),(200,200)<|box_end|>"
    huge = "The region holds " + ", ".join([unit] * 20_000)
    assert len(huge) > 2_300_000, len(huge)
    summary, out = _pair(tmp, [f"The region holds {GROUNDED}.", huge, "A region with shapes."])
    assert summary["candidates_over_limit"] == {"too_long": 1}, summary["candidates_over_limit"]
    assert huge not in out.read_text(encoding="utf-8")
    assert time.monotonic() - started < 60


def many_phrases_candidate(tmp: Path) -> None:
    """Under the length cap but with 200 phrases: left out as too_many_phrases, counted."""
    many = "Shapes: " + ", ".join(["<|object_ref_start|>x<|object_ref_end|><|box_start|>(1,1),(9,9)<|box_end|>"] * 200)
    assert len(many) < 20_000
    summary, out = _pair(tmp, [f"The region holds {GROUNDED}.", many, "A region with shapes."])
    assert summary["candidates_over_limit"] == {"too_many_phrases": 1}, summary["candidates_over_limit"]
    assert many not in out.read_text(encoding="utf-8")


def long_file_candidate(tmp: Path) -> None:
    """A 5 MB text in a candidates file never becomes a rejected answer: left out and counted."""
    long_text = "words " * 900_000
    summary, out = _pair(tmp, [f"The region holds {GROUNDED}.", "A region with shapes.", long_text])
    assert summary["candidates_over_limit"] == {"too_long": 1}
    assert "words words" not in out.read_text(encoding="utf-8")


CASES = [
    HostileCase("bounded", "trickled_reply", trickled_reply),
    HostileCase("bounded", "trickled_headers", trickled_headers),
    HostileCase("bounded", "cross_origin_redirect", cross_origin_redirect),
    HostileCase("bounded", "same_origin_redirect_is_followed", same_origin_redirect_is_followed),
    HostileCase("bounded", "alias_bomb_recipe", alias_bomb_recipe),
    HostileCase("bounded", "huge_yaml_line", huge_yaml_line),
    HostileCase("bounded", "huge_candidate", huge_candidate),
    HostileCase("bounded", "many_phrases_candidate", many_phrases_candidate),
    HostileCase("bounded", "long_file_candidate", long_file_candidate),
]
