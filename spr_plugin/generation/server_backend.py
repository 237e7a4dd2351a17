"""Candidate generation through any OpenAI-compatible chat server with image input.

vLLM (``vllm serve``), SGLang (``python -m sglang.launch_server``) and LLaMA-Factory's own
``llamafactory-cli api`` all serve ``/v1/chat/completions`` with ``image_url`` parts, so one client
covers a single GPU, a multi-GPU tensor-parallel server or a load-balanced cluster.

Why the ``openai`` package (``AsyncOpenAI``) rather than raw httpx: it already retries connection
errors, timeouts, 408/409/429 and 5xx with exponential backoff and jitter (honouring ``Retry-After``),
applies per-request timeouts, and maps status codes to typed exceptions; it runs on httpx itself.
What it cannot know is which failures are the user's (wrong URL, wrong model name): :meth:`check`
asks the server before the long run starts and turns those into one-line :class:`SPRError` messages.

Images go inline as base64 data URLs, so the server needs no access to the image files; they are
pre-resized first exactly as LLaMA-Factory's plugin of the served family (``ServerConfig.box_format``) does at
training time (``image_max_pixels``), because
vLLM and SGLang hand the image straight to the processor and Qwen2.5-VL boxes depend on the frame. Every
request asks for ``num_samples`` choices (``n``) with a per-prompt ``seed`` and, through
``extra_body``, ``skip_special_tokens: false`` (vLLM/SGLang sampling parameter) so Qwen's box tokens
survive. LLaMA-Factory's API ignores unknown request fields: start it with ``skip_special_tokens:
false`` in its YAML instead (and it ignores ``seed``).

A server is a remote party: its replies are read through a transport that stops at a size cap (a reply
cut off there is malformed, not a hang) and at one deadline per request (a server trickling its reply
cannot outlast ``--request-timeout``), redirects to another origin are not followed, a reply that is not
a chat completion (not JSON, no or empty ``choices``) fails only its own prompt and is counted, and a
request that fails for good in the middle of a batch does not discard the prompts of that batch that
finished (:class:`~spr_plugin.core.errors.PartialBatchError`).
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from functools import lru_cache
from typing import Any

from PIL import Image

from spr_plugin.core.errors import PartialBatchError, SPRError
from spr_plugin.core.frame import (
    DEFAULT_IMAGE_MAX_PIXELS,
    DEFAULT_IMAGE_MIN_PIXELS,
    lf_preprocess_image,
    lf_resize_steps,
)
from spr_plugin.core.images import has_orientation_tag
from spr_plugin.core.sharegpt import content_parts
from spr_plugin.families.prompts import Prompt
from spr_plugin.generation.transformers_backend import clean_output
from spr_plugin.settings import ServerConfig

logger = logging.getLogger(__name__)

_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "BMP": "image/bmp"}  # what every server decodes


@lru_cache(maxsize=64)
def _file_data_url(path: str, image_max_pixels: int | None, image_min_pixels: int | None, qwen_rules: bool = True) -> str:
    """A data URL of an image file as the model must see it, in the same frame for every image.

    Its own bytes only when they leave the server nothing to interpret: LLaMA-Factory's pre-resize keeps
    its size, the format is widely accepted, it is RGB already and carries no EXIF orientation tag. Else
    the pre-resized RGB image as PNG (lossless: no second JPEG loss the training images never had), with
    no EXIF: servers such as vLLM do not pre-resize (sending the original would change the Qwen2.5-VL
    frame), may honour an orientation tag LLaMA-Factory ignores (the raw frame is the training frame,
    docs/inputs.md) and convert other modes their own way (RGBA on white, where PIL drops the alpha).
    """
    try:
        with Image.open(path) as im:
            mime = _MIME.get(im.format or "")
            passthrough = (
                mime is not None
                and im.mode == "RGB"
                and not has_orientation_tag(im)
                and not lf_resize_steps(im.width, im.height, image_max_pixels, image_min_pixels, qwen_rules)
            )
            if not passthrough:
                return _pil_data_url(lf_preprocess_image(im, image_max_pixels, image_min_pixels, qwen_rules))
    except OSError as exc:
        raise SPRError(f"cannot read image {path}: {exc}") from None
    with open(path, "rb") as f:
        return f"data:{mime};base64," + base64.b64encode(f.read()).decode("ascii")


def _pil_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def to_openai_messages(
    prompt: Prompt,
    image_max_pixels: int | None = DEFAULT_IMAGE_MAX_PIXELS,
    image_min_pixels: int | None = DEFAULT_IMAGE_MIN_PIXELS,
    qwen_rules: bool = True,
) -> list[dict[str, Any]]:
    """The prompt as one user message; ``<image>`` placeholders become ``image_url`` parts in place.

    Images are pre-resized like LLaMA-Factory does at training time (:mod:`spr_plugin.core.frame`), with the
    steps of the served family's plugin (``qwen_rules``: every family but InternVL).
    """

    def image_part(i: int) -> dict[str, Any]:
        image = prompt.images[i]
        if isinstance(image, Image.Image):
            url = _pil_data_url(lf_preprocess_image(image, image_max_pixels, image_min_pixels, qwen_rules))
        else:
            url = _file_data_url(str(image), image_max_pixels, image_min_pixels, qwen_rules)
        return {"type": "image_url", "image_url": {"url": url}}

    return [{"role": "user", "content": content_parts(prompt.text, image_part, len(prompt.images))}]


def reply_byte_cap(num_samples: int, max_new_tokens: int) -> int:
    """Bytes a chat completion of ``num_samples`` choices may take: generous JSON per token plus 1 MB of envelope."""
    return 1_000_000 + 64 * num_samples * max_new_tokens


def _origin(url: Any) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


def _capped_transport(cap: int, total_timeout: float):  # noqa: C901 (classes defined here to import httpx lazily)
    """An httpx transport that bounds what a server can make spr do, whatever the server does.

    * **Size**: response bodies end after ``cap`` bytes (the connection is closed there). A body cut off at the
      cap fails to parse as JSON and is counted as a malformed reply of that prompt; raising instead would make
      the client retry the same oversized reply.
    * **Time**: one deadline per request, headers and body together: the request's own timeout (``--request-timeout``,
      or the shorter one of :meth:`OpenAIServerGenerator.check`). httpx's read timeout applies per read, so a
      server that trickles a byte a second never trips it; past the deadline the attempt ends with
      ``httpx.ReadTimeout``, which the client treats like any timeout (retried up to ``--max-retries``).
    * **Origin**: a redirect to another origin (scheme, host, port) is not followed: the prompts and images go
      to ``--base-url``'s server only. The redirect reaches the client as an error status naming the target.
    """
    import httpx

    def _deadline_error(request: httpx.Request, budget: float) -> httpx.ReadTimeout:
        return httpx.ReadTimeout(f"no complete reply within {budget:g} s (--request-timeout)", request=request)

    class _CappedStream(httpx.AsyncByteStream):
        def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request, deadline: float, budget: float) -> None:
            self._inner, self._request, self._deadline, self._budget = inner, request, deadline, budget

        async def __aiter__(self) -> AsyncIterator[bytes]:
            loop = asyncio.get_running_loop()
            chunks = self._inner.__aiter__()
            left = cap
            while True:
                remaining = self._deadline - loop.time()
                if remaining <= 0:
                    raise _deadline_error(self._request, self._budget)
                try:
                    chunk = await asyncio.wait_for(chunks.__anext__(), remaining)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise _deadline_error(self._request, self._budget) from None
                if len(chunk) >= left:
                    yield chunk[:left]
                    return
                left -= len(chunk)
                yield chunk

        async def aclose(self) -> None:
            await self._inner.aclose()

    class _CappedTransport(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self._inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100))

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            budget = (request.extensions.get("timeout") or {}).get("read") or total_timeout
            loop = asyncio.get_running_loop()
            deadline = loop.time() + budget
            try:
                response = await asyncio.wait_for(self._inner.handle_async_request(request), budget)
            except TimeoutError:
                raise _deadline_error(request, budget) from None
            location = response.headers.get("location")
            if response.is_redirect and location is not None:
                target = request.url.join(location)
                if _origin(target) != _origin(request.url):
                    await response.aclose()
                    where = f"{target.scheme}://{target.host}" + (f":{target.port}" if target.port else "")
                    message = f"redirect to another origin ({where}) refused: prompts go to --base-url only"
                    return httpx.Response(response.status_code, json={"message": message}, request=request)
            headers = [(k, v) for k, v in response.headers.raw if k.lower() != b"content-length"]
            return httpx.Response(
                response.status_code,
                headers=headers,
                stream=_CappedStream(response.stream, request, deadline, budget),  # type: ignore[arg-type]
                extensions=response.extensions,
            )

        async def aclose(self) -> None:
            await self._inner.aclose()

    return _CappedTransport()


class _BadReply(Exception):
    """A 200 reply that is not a chat completion with text choices; ``reason`` is its failure counter."""

    def __init__(self, message: str, reason: str = "bad_reply") -> None:
        super().__init__(message)
        self.reason = reason


def reply_texts(resp: Any, max_chars: int) -> tuple[list[str], int]:
    """The text of every choice of a chat completion, each cut to ``max_chars``; and how many were cut.

    Raises :class:`_BadReply` for a reply without a ``choices`` list, with an empty one (``empty_choices``:
    counted apart, it is a server answering without sampling) or without any text choice.
    """
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list):
        raise _BadReply("no 'choices' list")
    if not choices:
        raise _BadReply("an empty 'choices' list", "empty_choices")
    texts, cut = [], 0
    for choice in choices:
        content = getattr(getattr(choice, "message", None), "content", None)
        if isinstance(content, str):
            cut += len(content) > max_chars
            texts.append(content[:max_chars])
    if choices and not texts:
        raise _BadReply("no choice holds a text message")
    return texts, cut


class OpenAIServerGenerator:
    """Samples candidates from an OpenAI-compatible server with bounded concurrency.

    The client and its connection pool live on one private event loop, so the synchronous
    :func:`spr_plugin.generation.candidates.generate_candidates` loop can call :meth:`generate` batch by batch.
    """

    seed_scope = "prompt"

    def __init__(self, config: ServerConfig, *, check: bool = True) -> None:
        import httpx
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        from spr_plugin.families.profiles import get_profile

        self.config = config
        #: LLaMA-Factory's pre-resize steps of the served family (InternVL's plugin skips the Qwen2-VL plugin's).
        self.qwen_rules = get_profile(config.box_format).qwen_resize_rules
        #: Prompts per batch that keep every request slot busy: a smaller --batch-size is raised to it.
        self.min_batch_size = config.min_batch_size
        self.requests = 0
        #: Prompts whose reply was unusable, by reason (``bad_reply``, ``reply_cut_at_cap``, ``rejected``, ...).
        self.failures: Counter = Counter()
        self._loop = asyncio.new_event_loop()
        timeout = httpx.Timeout(config.timeout, connect=min(10.0, config.timeout))
        self.max_reply_bytes = reply_byte_cap(config.num_samples, config.max_new_tokens)
        self.max_reply_chars = 32 * config.max_new_tokens  # no token is 32 characters; longer means a broken server
        self._client = AsyncOpenAI(
            base_url=config.base_url.rstrip("/"),
            api_key=config.api_key or "EMPTY",
            timeout=timeout,
            max_retries=config.max_retries,
            http_client=DefaultAsyncHttpxClient(
                transport=_capped_transport(self.max_reply_bytes, config.timeout), timeout=timeout
            ),
        )
        self._sem: asyncio.Semaphore | None = None
        if check:
            try:
                self.check()
            except BaseException:
                self.close()
                raise

    @property
    def name(self) -> str:
        return f"{self.config.served_model}@{self.config.base_url}"

    def _run(self, coro):
        return self._loop.run_until_complete(coro)

    # -- up-front checks -------------------------------------------------------------------------

    def check(self) -> list[str]:
        """Fail fast, before hours of work: is the server there, and does it serve the model?

        Returns the model ids the server lists. One request, no retries, short timeout: a wrong URL
        answers "connection refused" at once, and retrying it would only delay the error.
        """
        import openai

        url, cfg = self.config.base_url, self.config
        quick = self._client.with_options(max_retries=0, timeout=min(30.0, cfg.timeout))
        try:
            ids = [str(m.id) for m in self._run(quick.models.list()).data]
        except openai.APIConnectionError as exc:
            raise SPRError(
                f"cannot reach an OpenAI-compatible server at {url} ({exc.__cause__ or exc}); start it first "
                "(vllm serve MODEL / API_PORT=8000 llamafactory-cli api CONFIG.yaml) and check --base-url"
            ) from None
        except openai.AuthenticationError:
            raise SPRError(f"{url} refused the API key (401); pass --api-key or set SPR_API_KEY") from None
        except openai.NotFoundError:
            raise SPRError(
                f"{url}/models answered 404: not an OpenAI-compatible API root; --base-url usually ends in /v1"
            ) from None
        except openai.APIStatusError as exc:
            raise SPRError(f"{url}/models answered HTTP {exc.status_code}: {_detail(exc)}") from None
        except (openai.OpenAIError, ValueError, TypeError, AttributeError) as exc:  # not JSON, not a model list
            raise SPRError(
                f"{url}/models did not answer like an OpenAI-compatible API ({type(exc).__name__}); check --base-url"
            ) from None
        if cfg.served_model not in ids:
            raise SPRError(
                f"model {cfg.served_model!r} is not served at {url}; it serves: {', '.join(ids) or 'nothing'} "
                "(see --served-model)"
            )
        return ids

    # -- generation ------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Prompt], seeds: Sequence[int]) -> list[list[str]]:
        """``num_samples`` texts per prompt (an empty list for a prompt the server rejected)."""
        return self._run(self._generate_all(prompts, seeds))

    async def _generate_all(self, prompts: Sequence[Prompt], seeds: Sequence[int]) -> list[list[str]]:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.config.concurrency)
        bad_before = self.failures["bad_reply"]
        tasks = [asyncio.ensure_future(self._one(p, s)) for p, s in zip(prompts, seeds)]
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        except BaseException:  # cancelled from outside (Ctrl-C): stop the rest
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        errors = [r for r in results if isinstance(r, BaseException)]
        for err in errors:
            if not isinstance(err, Exception):
                raise err
        if errors:
            first = errors[0]
            message = str(first) if isinstance(first, SPRError) else f"{type(first).__name__}: {first}"
            raise PartialBatchError(message, [None if isinstance(r, BaseException) else r for r in results])
        if prompts and all(not r for r in results) and self.failures["bad_reply"] - bad_before >= len(prompts):
            raise SPRError(
                f"{self.config.base_url} answers chat requests with replies that are not OpenAI chat completions "
                "(not JSON, or no 'choices'); check --base-url and the server"
            )
        return [r for r in results if not isinstance(r, BaseException)]

    async def _one(self, prompt: Prompt, seed: int) -> list[str]:
        import openai

        cfg = self.config
        try:
            messages = to_openai_messages(prompt, cfg.image_max_pixels, cfg.image_min_pixels, self.qwen_rules)
        except SPRError as exc:
            self.failures["unreadable_image"] += 1
            logger.warning("skipping a %s prompt: %s", prompt.variant, exc)
            return []
        texts: list[str] = []
        # A server may return fewer choices than asked (some ignore n): ask again for the rest.
        for attempt in range(4):
            want = cfg.num_samples - len(texts)
            if want <= 0:
                break
            assert self._sem is not None
            async with self._sem:
                try:
                    self.requests += 1
                    resp = await self._client.chat.completions.create(
                        model=cfg.served_model,
                        messages=messages,  # type: ignore[arg-type]
                        n=want,
                        temperature=cfg.temperature,
                        top_p=cfg.top_p,
                        max_tokens=cfg.max_new_tokens,
                        seed=seed + attempt,
                        extra_body={"skip_special_tokens": False, **cfg.extra_body},
                    )
                    got, cut = reply_texts(resp, self.max_reply_chars)
                except openai.NotFoundError as exc:
                    raise SPRError(f"{cfg.base_url} answered 404 for model {cfg.served_model!r}: {_detail(exc)}") from None
                except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                    self.failures["rejected"] += 1
                    logger.warning("server rejected a %s prompt (HTTP %s): %s", prompt.variant, exc.status_code, _detail(exc))
                    return []
                except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
                    raise SPRError(
                        f"{cfg.base_url} failed after {cfg.max_retries} retries ({type(exc).__name__}: {_detail(exc)}); "
                        "finished candidates are kept, rerun the same command to resume"
                    ) from None
                except openai.APIStatusError as exc:
                    raise SPRError(f"{cfg.base_url} answered HTTP {exc.status_code}: {_detail(exc)}") from None
                except (openai.APIResponseValidationError, _BadReply, ValueError, TypeError, AttributeError) as exc:
                    # Not JSON (or cut off at the reply cap), no or empty 'choices', choices without text.
                    self.failures[getattr(exc, "reason", "bad_reply")] += 1
                    logger.warning("unusable reply to a %s prompt (%s: %s)", prompt.variant, type(exc).__name__, str(exc)[:120])
                    return texts[: cfg.num_samples]
            if cut:
                self.failures["reply_cut_at_cap"] += cut
            texts += [clean_output(t) for t in got]
        if 0 < len(texts) < cfg.num_samples:
            self.failures["fewer_choices_than_asked"] += 1  # asked four times; a server ignoring n keeps it short
        return texts[: cfg.num_samples]

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.close())
        finally:
            self._loop.close()

    def __enter__(self) -> OpenAIServerGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _detail(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        return str(body.get("message") or body.get("detail") or body)
    return str(getattr(exc, "message", exc))
