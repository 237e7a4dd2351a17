"""Small builders of records shared by the unit tests."""

from http.server import BaseHTTPRequestHandler

from spr_plugin.core.records import AnnotatedObject, Box, Candidate, Region

W, H = 640, 480


def region(boxes=((64, 48, 128, 96), (320, 240, 400, 320)), cats=("red circle", "blue square"), path="/nonexistent.jpg"):
    objs = tuple(AnnotatedObject(i + 1, c, Box(*b)) for i, (b, c) in enumerate(zip(boxes, cats)))
    union = objs[0].box
    for o in objs[1:]:
        union = union.union(o.box)
    return Region("1_0", 1, path, W, H, union, objs, 1)


def cand(text, idx=0, variant="box_text", region_id="1_0"):
    return Candidate(region_id, variant, idx, text)


def load_bench(name: str):
    """Import a ``bench/`` script as a module (bench/ holds scripts, not a package)."""
    import importlib
    import sys
    from pathlib import Path

    bench = str(Path(__file__).resolve().parents[1] / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module(name)


def run_spr(*args, cwd=None):
    """``spr ARGS`` in this process: :func:`spr_plugin.cli.main` with its output captured, returned in the shape
    of :func:`subprocess.run`'s result (``returncode``, ``stdout``, ``stderr``). Log records of the run go to
    its ``stderr`` as they would in a terminal. Starting a process that imports torch costs seconds per call;
    a few subprocess smoke tests (tests/test_cli.py) keep the real entry points honest."""
    import contextlib
    import io
    import logging
    import subprocess

    from spr_plugin.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if "-v" in argv or "--verbose" in argv else logging.INFO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(cwd or "."):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return subprocess.CompletedProcess(["spr", *argv], code, out.getvalue(), err.getvalue())


class FakeOpenAI(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible endpoint (no model behind it): one model ``tiny`` and chat replies with ``n``
    choices cycling through :meth:`texts`. Subclasses override ``texts`` (what it answers) and ``seen`` (what it
    records of each request); serve it with ``http.server.ThreadingHTTPServer(("127.0.0.1", 0), Subclass)``."""

    def texts(self, body: dict) -> list[str]:
        return ["a cat"]

    def seen(self, body: dict) -> None:
        pass

    def _reply(self, body: dict) -> None:
        import json

        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._reply({"object": "list", "data": [{"id": "tiny", "object": "model", "created": 0, "owned_by": "t"}]})

    def do_POST(self) -> None:  # noqa: N802
        import json

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen(body)
        texts = self.texts(body)
        choices = [
            {"index": i, "message": {"role": "assistant", "content": texts[i % len(texts)]}, "finish_reason": "stop"}
            for i in range(body.get("n", 1))
        ]
        self._reply({"id": "x", "object": "chat.completion", "created": 0, "model": "tiny", "choices": choices})
