"""Helpers of the ``bounded`` and ``drops`` hostile cases: spr in process, a small scene, a hostile server.

The server listens on 127.0.0.1 only, serves each connection in a daemon thread and every handler loop is
bounded (it stops by itself after a few seconds even if nobody reads), so a failing case cannot hang.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MODEL = "hostile"
GROUNDED = "<|object_ref_start|>red circle<|object_ref_end|><|box_start|>(10,10),(200,200)<|box_end|>"


@dataclass(frozen=True)
class Run:
    """One in-process ``spr`` run: exit status, what it printed and how long it took."""

    rc: int
    out: str
    err: str
    seconds: float

    def one_line_error(self, *needles: str) -> str:
        """Assert the run failed with exactly one short ``spr ...: error:`` line holding every needle."""
        lines = [ln for ln in self.err.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("spr ") and ": error: " in ln]
        assert self.rc == 2, f"exit status {self.rc}, stderr {self.err[-300:]!r}"
        assert len(errors) == 1, f"expected one error line, got {lines[-3:]!r}"
        line = errors[0]
        assert len(line) <= 1000, f"error line of {len(line)} characters"
        for needle in needles:
            assert needle in line, f"{needle!r} not in {line!r}"
        return line


def spr(*args: str | Path) -> Run:
    """``spr ARGS`` through :func:`spr_plugin.cli.main` in this process, stdout and stderr captured."""
    from spr_plugin.cli import main

    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as exc:  # argparse errors
            rc = int(exc.code or 0)
    return Run(rc, out.getvalue(), err.getvalue(), time.monotonic() - start)


def scene(tmp: Path) -> tuple[Path, Path]:
    """Annotations and image folder of two rendered scenes (exact boxes, five or more objects each)."""
    from spr_plugin.demo.scenes import render_scenes

    ann = render_scenes(tmp / "scenes", n_images=2, seed=0)
    return ann, ann.parent / "images"


def regions_file(tmp: Path) -> Path:
    """A regions JSONL of the scene, written by ``spr regions``."""
    ann, images = scene(tmp)
    out = tmp / "regions.jsonl"
    run = spr("regions", "--annotations", ann, "--images", images, "--out", out)
    assert run.rc == 0, run.err
    return out


def first_region(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8").splitlines()[0])


# -- a hostile OpenAI-compatible server ------------------------------------------------------------------


Behaviour = Callable[[BaseHTTPRequestHandler, dict], None]


def chat_reply(n: int, text: str = f"The region holds {GROUNDED}.") -> dict:
    return {
        "id": "x",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} for i in range(n)],
    }


def send_json(handler: BaseHTTPRequestHandler, obj: dict, status: int = 200) -> None:
    body = json.dumps(obj).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        handler.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    behaviour: Behaviour
    posts: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # /v1/models
        send_json(self, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    def do_POST(self) -> None:
        self.server.posts += 1
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        self.server.behaviour(self, request)


@contextlib.contextmanager
def server(behaviour: Behaviour) -> Iterator[_Server]:
    """A server on 127.0.0.1 (a free port) answering chat requests with ``behaviour``; ``.posts`` counts them."""
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.behaviour = behaviour
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def base_url(srv: _Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/v1"


def generate(tmp: Path, srv: _Server, *extra: str) -> tuple[Run, Path]:
    """``spr generate`` of the scene's regions through ``srv`` (one variant, two samples, no retries)."""
    regions = tmp / "regions.jsonl" if (tmp / "regions.jsonl").exists() else regions_file(tmp)
    out = tmp / "candidates.jsonl"
    run = spr(
        "generate", "--regions", regions, "--out", out, "--backend", "openai", "--base-url", base_url(srv),
        "--served-model", MODEL, "--num-samples", "2", "--variants", "box_text", "--max-retries", "0",
        "--no-progress", "--images", tmp / "scenes" / "images", *extra,
    )  # fmt: skip
    return run, out
