"""Hosted teacher over the OpenAI-compatible chat API (OpenAI, Together, vLLM, Ollama, llama.cpp).

Soft labels come from the first answer token's ``top_logprobs``: tokens are stripped,
case-folded and matched to the label whose verbalizer they begin; their probabilities are
summed per label and renormalised over the label set. A label absent from the top-K gets
no invented number: its log-prob is bounded above by the smallest returned log-prob, that
bound is stored and the row is flagged ``bounded:<label>``.

``--hosted-scoring echo`` uses the completions endpoint instead (vLLM, llama.cpp): each
label's full verbalizer is appended to the prompt and the server echoes the prompt's token
log-probs, so multi-token labels are scored like the local teacher does. llama.cpp reports
the distribution of position i against token i (one position late); :func:`echo_label_logprob`
reads it from position i-1 instead, and a one-request probe finds which kind of server it is.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import ClassVar

from distillery.annotate.logprobs import PROBE, echo_is_shifted, echo_label_logprob, labels_from_top_logprobs
from distillery.annotate.request_cache import CACHE_FILES, RequestCache
from distillery.annotate.teacher import Annotation, Teacher, TeacherRuntime, TeacherSpec, model_setting, normalise
from distillery.core.errors import UserError
from distillery.core.options import check_settings, option
from distillery.core.secrets import NO_KEY, api_key, looks_like_key, parse_headers, scrub
from distillery.core.tasks import TaskSpec

__all__ = ["AuthError", "HostedSettings", "HostedTeacher", "checked_key", "cost"]

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


def checked_key(settings) -> str:
    """The API key, once ``--base-url`` is given and ``--api-key-env`` names a set variable: annotate checks
    both before it writes anything (:func:`api_key` says how each fails)."""
    if not settings.base_url:
        raise UserError(
            "--backend openai: expected --base-url (e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1)"
        )
    return api_key(settings.api_key_env)


class AuthError(PermissionError):
    """The server refused the API key: the run stops at once."""


class ServerConfigError(ConnectionError):
    """The very first requests all failed the same way (no server there, unknown model, ...)."""


@dataclass
class HostedSettings:
    """The settings of the ``openai`` backend (an OpenAI-compatible server), registered with it."""

    # Settings a rerun may change without changing the answers (the rest are the run's fingerprint).
    SAME_ANSWERS: ClassVar[tuple] = (
        "base_url",  # the model is --teacher (fingerprinted); a server restarted on another port serves it the same
        "api_key_env",
        "extra_headers",
        "request_timeout",
        "concurrency",
        "requests_per_minute",
        "tokens_per_minute",
        "max_retries",
        "price_prompt_per_m",
        "price_completion_per_m",
        "max_cost",
    )

    teacher: str = model_setting()
    base_url: str = option(
        "",
        "openai backend: the server's base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1",
        short="server URL (…/v1)",
        shown="common",
        metavar="URL",
    )
    api_key_env: str = option(
        "OPENAI_API_KEY",
        "openai backend: the environment variable that holds the API key",
        form="env_name",
        short="variable that holds the API key",
        metavar="NAME",
    )
    extra_headers: list[str] = option(
        [],
        "openai backend: extra HTTP headers, 'Name: value', comma-separated "
        "(values are never written to a file or shown)",
        short="HTTP headers 'Name: value',…",
    )
    request_timeout: float = option(
        30.0,
        "openai backend: seconds before a request times out (then it is retried)",
        gt=0.0,
        short="seconds per request (then retried)",
    )
    hosted_scoring: str = option(
        "top-logprobs",
        "openai backend: top-logprobs (chat endpoint, first answer token) or echo (completions endpoint: "
        "every label's full verbalizer scored from echoed prompt log-probs; vLLM, llama.cpp)",
        choices=("top-logprobs", "echo"),
        short="top-logprobs or echo (vLLM, llama.cpp)",
    )
    template_from: str = option(
        "",
        "echo scoring: a model (hub id, dir, .gguf or smollm2) whose chat template formats the prompt; empty "
        "= plain text",
        short="echo: model whose chat template to use",
        metavar="MODEL",
    )
    top_logprobs: int = option(
        20,
        "openai backend: how many top tokens' log-probs to ask for",
        ge=1,
        short="top tokens' log-probs to ask for",
    )
    concurrency: int = option(4, "openai backend: requests in flight", ge=1, short="requests in flight")
    requests_per_minute: float = option(
        0.0,
        "openai backend: send at most this many requests a minute, evenly spaced (0 = no limit)",
        ge=0.0,
        short="requests a minute (0 = no limit)",
    )
    tokens_per_minute: float = option(
        0.0,
        "openai backend: at most this many tokens a minute (prompt estimated as characters/4, plus "
        "max_tokens; 0 = no limit)",
        ge=0.0,
        short="tokens a minute (0 = no limit)",
    )
    max_retries: int = option(
        6,
        "openai backend: retries of a request on 429, 5xx, timeouts and dropped connections",
        ge=0,
        short="retries on 429, 5xx, timeouts",
    )
    price_prompt_per_m: float = option(
        0.0,
        "openai backend: price per million prompt tokens, for --dry-run and --max-cost",
        ge=0.0,
        short="price per million prompt tokens",
    )
    price_completion_per_m: float = option(
        0.0, "openai backend: price per million completion tokens", ge=0.0, short="price per million completion tokens"
    )
    max_cost: float = option(
        0.0,
        "openai backend: stop cleanly (resumable) once this much is spent (0 = no limit)",
        ge=0.0,
        short="stop once this much is spent (0 = none)",
        shown="common",
    )

    def __post_init__(self) -> None:
        if looks_like_key(self.api_key_env):  # a key pasted as the name: refused before anything records it
            api_key(self.api_key_env)
        if isinstance(self.extra_headers, str):
            self.extra_headers = [h.strip() for h in self.extra_headers.split(",") if h.strip()]
        check_settings(self)
        parse_headers(self.extra_headers)  # a malformed header stops here, before any request


def cost(usage: dict, prices) -> float:
    """The money ``usage`` (tokens) cost at a backend's --price-prompt-per-m and --price-completion-per-m
    (0 for a backend without prices)."""
    return usage.get("prompt_tokens", 0) / 1e6 * getattr(prices, "price_prompt_per_m", 0.0) + usage.get(
        "completion_tokens", 0
    ) / 1e6 * getattr(prices, "price_completion_per_m", 0.0)


class HostedTeacher(Teacher):
    """Labels rows through an OpenAI-compatible ``/chat/completions`` endpoint.

    One retry policy (tenacity: exponential backoff with jitter on 429, 5xx, timeouts and
    dropped connections, honouring ``Retry-After``); the client's own retries are off. Requests
    that cannot succeed (400, 403, 404, context too long) become error rows with the server's
    message, failed for good (:func:`~distillery.annotate.teacher.failed_for_good`); a refused key
    (401) stops the run. ``answered`` counts the rows labelled so far; the caller adds those of
    earlier runs, so that a rerun whose rows the server all refuses is not taken for a wrong URL.
    """

    def __init__(self, settings: HostedSettings, task: TaskSpec, runtime: TeacherRuntime):
        self.settings = settings
        try:
            import aiolimiter  # noqa: F401
            import openai  # noqa: F401
            import tenacity  # noqa: F401
        except ImportError:
            raise ImportError(
                "the hosted teacher needs openai, tenacity and aiolimiter: pip install 'distillery[hosted]'"
            ) from None
        self.task = task
        self.api_key = checked_key(settings)
        self.headers = parse_headers(
            settings.extra_headers
        )  # 'api-key: KEY' -> {'api-key': 'KEY'}, as HTTP splits a header line
        self.verbalizers = [task.verbalizers[lab] for lab in task.labels]
        self.cache = RequestCache(runtime.folder / CACHE_FILES[0])
        if runtime.restart:  # a restart asks the server again: the model behind --teacher may have changed
            self.cache.clear()
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests_sent": 0, "cache_hits": 0}
        self.answered = 0  # rows answered in this run; until one is, a uniform failure stops the run
        self.template = None
        # One event loop for the whole run, so the rate limiters keep their state across batches.
        self.loop = asyncio.new_event_loop()
        self.request_limiter = self.token_limiter = None
        if settings.requests_per_minute or settings.tokens_per_minute:
            from aiolimiter import AsyncLimiter

            if settings.requests_per_minute:  # evenly spaced requests, no burst
                self.request_limiter = AsyncLimiter(1, 60.0 / settings.requests_per_minute)
            if settings.tokens_per_minute:  # a leaky bucket of one minute's tokens
                self.token_limiter = AsyncLimiter(settings.tokens_per_minute, 60.0)
        self.shifted: bool | None = None  # echo mode: llama.cpp's late prompt log-probs (probed once)
        if settings.hosted_scoring == "echo" and settings.template_from:
            from distillery.core.models import load_tokenizer

            self.template = load_tokenizer(settings.template_from)

    def spent(self) -> float:
        """Money spent in this run, at --price-prompt-per-m and --price-completion-per-m."""
        return cost(self.usage, self.settings)

    def spec(self) -> TeacherSpec:
        """The model by its name on the server (the server itself is not recorded: it may hold a secret)."""
        how = "echoed prompt log-probs" if self.settings.hosted_scoring == "echo" else "top log-probs"
        return TeacherSpec(model=self.settings.teacher, description=f"{self.settings.teacher} on a server ({how})")

    def _request(self, text: str) -> dict:
        return {
            "model": self.settings.teacher,
            "messages": self.task.messages(text),
            "temperature": 0.0,
            "max_tokens": 1,
            "logprobs": True,
            "top_logprobs": self.settings.top_logprobs,
        }

    def _echo_request(self, prompt: str) -> dict:
        return {
            "model": self.settings.teacher,
            "prompt": prompt,
            "temperature": 0.0,
            "max_tokens": 1,
            "echo": True,
            "logprobs": self.settings.top_logprobs,
        }

    def prompt_text(self, text: str) -> str:
        """Echo mode: the prompt as plain text, formatted by --template-from's chat template if given."""
        return self.task.prompt_text(text, self.template)

    def _safe(self, message: str) -> str:
        """``message`` with the API key, every extra header's value and credential-like pieces (a URL's
        ``user:pass@``) masked: a server may echo them, and these messages reach the chunks and the terminal."""
        secrets = [self.api_key] if self.settings.api_key_env != NO_KEY else []
        for secret in sorted([*secrets, *self.headers.values()], key=len, reverse=True):
            message = message.replace(secret, "***")
        return scrub(message)

    def prompt_lengths(self, texts: list[str]) -> list[int]:
        """Characters per row: a server batches for itself, so only the row count limits a call."""
        return [len(t) for t in texts]

    def score(self, texts: list[str]) -> list[Annotation]:
        """Annotate a batch. If nothing has been answered yet and every row failed the same way
        (wrong URL, unknown model), stop with one line instead of writing a chunk of errors."""
        out = self.loop.run_until_complete(self._score_all(texts))
        self.answered += sum(a.error_type == "" for a in out)
        kinds = {a.error_type for a in out}
        if not self.answered and len(kinds) == 1 and "" not in kinds:
            raise ServerConfigError(
                f"every request to {self._safe(self.settings.base_url)} failed ({out[0].error_type}: "
                f"{out[0].error_message[:200]}); "
                "check --base-url and --teacher (the model name)"
            )
        return out

    async def _score_all(self, texts: list[str]) -> list[Annotation]:
        """All rows of a batch concurrently, on one client; echo mode probes the server once first."""
        client, gate = self._client(), asyncio.Semaphore(self.settings.concurrency)
        one = self._one
        try:
            if self.settings.hosted_scoring == "echo":
                one = self._echo_one
                if self.shifted is None:
                    probe = await self._send(
                        client, gate, self._echo_request(self.task.prompt_head(self.template) + PROBE), chat=False
                    )
                    if isinstance(probe, Annotation):
                        return [probe] * len(texts)  # the server failed: reported like any failed request
                    self.shifted = echo_is_shifted(probe["choices"][0]["logprobs"])
            return list(await asyncio.gather(*(one(client, gate, t) for t in texts)))
        finally:
            await client.close()

    def _client(self):
        import openai

        return openai.AsyncOpenAI(
            base_url=self.settings.base_url,
            api_key=self.api_key,
            max_retries=0,
            timeout=self.settings.request_timeout,
            default_headers=self.headers or None,
        )

    async def _one(self, client, gate: asyncio.Semaphore, text: str) -> Annotation:
        answer = await self._send(client, gate, self._request(text), chat=True)
        return answer if isinstance(answer, Annotation) else self._parse(answer)

    async def _echo_one(self, client, gate: asyncio.Semaphore, text: str) -> Annotation:
        """One completions request per label continuation: prompt + continuation, echoed with log-probs."""
        prompt = self.prompt_text(text)
        pieces = [(k, c) for k, lab in enumerate(self.task.labels) for c in self.task.continuations(lab)]
        answers = await asyncio.gather(
            *(self._send(client, gate, self._echo_request(prompt + c), chat=False) for _, c in pieces)
        )
        failed = next((a for a in answers if isinstance(a, Annotation)), None)
        if failed is not None:
            return failed
        per_label: list[list[float]] = [[] for _ in self.task.labels]
        bounded = set()
        for (k, cont), body in zip(pieces, answers):
            self._count_usage(body)
            echoed = body["choices"][0].get("text") or ""
            generated = echoed[len(prompt + cont) :] if echoed.startswith(prompt + cont) else ""
            try:
                value, was_bounded = echo_label_logprob(
                    body["choices"][0]["logprobs"], cont, generated, bool(self.shifted)
                )
            except (ValueError, KeyError, TypeError) as err:
                return Annotation(error_type="bad_echo", error_message=str(err)[:300])
            per_label[k].append(value)
            if was_bounded:
                bounded.add(self.task.labels[k])
        ann = normalise(
            [
                math.log(sum(math.exp(v) for v in values)) if any(math.isfinite(v) for v in values) else -math.inf
                for values in per_label
            ]
        )
        ann.flags = ";".join(f"bounded:{b}" for b in self.task.labels if b in bounded)
        return ann

    async def _send(self, client, gate: asyncio.Semaphore, request: dict, chat: bool) -> dict | Annotation:
        """The server's answer (from the cache if it was received before), or an error annotation."""
        import openai
        from tenacity import (
            AsyncRetrying,
            retry_if_exception,
            stop_after_attempt,
            wait_random_exponential,
        )

        key = RequestCache.key({"base_url": self.settings.base_url, **request})
        body = self.cache.get(key)
        if body is not None:
            self.usage["cache_hits"] += 1
            return body
        create = client.chat.completions.create if chat else client.completions.create

        def retryable(err: BaseException) -> bool:
            if isinstance(err, (openai.APIConnectionError, openai.APITimeoutError)):
                return True
            return isinstance(err, openai.APIStatusError) and err.status_code in RETRY_STATUS

        def wait(state) -> float:  # Retry-After when the server names it, else backoff with jitter
            err = state.outcome.exception()
            after = getattr(getattr(err, "response", None), "headers", {}).get("retry-after") if err else None
            try:
                return min(float(after), 60.0) if after else wait_random_exponential(multiplier=0.5, max=20)(state)
            except ValueError:
                return wait_random_exponential(multiplier=0.5, max=20)(state)

        try:
            async with gate:
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception(retryable),
                    wait=wait,
                    stop=stop_after_attempt(self.settings.max_retries + 1),
                    reraise=True,
                ):
                    with attempt:
                        await self._within_rate_limits(request)
                        self.usage["requests_sent"] += 1
                        response = await create(**request)
        except openai.AuthenticationError:
            if self.settings.api_key_env == NO_KEY:
                raise AuthError(
                    f"the server at {self._safe(self.settings.base_url)} needs an API key (401); found --api-key-env "
                    "none; "
                    "export the key and pass its variable's name with --api-key-env"
                ) from None
            raise AuthError(
                f"the server at {self._safe(self.settings.base_url)} refused the API key from "
                f"${self.settings.api_key_env} (401); set a valid key"
            ) from None
        except openai.APIStatusError as err:
            return Annotation(error_type=f"http_{err.status_code}", error_message=self._safe(str(err))[:300])
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            return Annotation(error_type=type(err).__name__, error_message=self._safe(str(err))[:300])
        body = response.model_dump()
        self.cache.put(key, body)
        return body

    async def _within_rate_limits(self, request: dict) -> None:
        """Wait for --requests-per-minute and --tokens-per-minute (tokens estimated as chars/4 + max_tokens)."""
        if self.request_limiter is not None:
            await self.request_limiter.acquire()
        if self.token_limiter is not None:
            tokens = len(json.dumps(request.get("messages") or request.get("prompt"))) / 4 + request["max_tokens"]
            await self.token_limiter.acquire(min(tokens, self.settings.tokens_per_minute))

    def _count_usage(self, body: dict) -> None:
        usage = body.get("usage") or {}
        self.usage["prompt_tokens"] += usage.get("prompt_tokens") or 0
        self.usage["completion_tokens"] += usage.get("completion_tokens") or 0

    def _parse(self, body: dict) -> Annotation:
        self._count_usage(body)
        choice = body["choices"][0]
        content = ((choice.get("logprobs") or {}).get("content")) or []
        if content and content[0].get("top_logprobs"):
            top = [(t["token"], t["logprob"]) for t in content[0]["top_logprobs"]]
            logprobs, covered, bounded = labels_from_top_logprobs(top, self.verbalizers)
            if not any(math.isfinite(x) for x in logprobs):
                return Annotation(
                    error_type="no_label_in_top_logprobs", error_message=f"top tokens: {[t for t, _ in top[:5]]}"
                )
            return Annotation(logprobs=logprobs, mass=covered, flags=";".join(f"bounded:{b}" for b in bounded))
        text = (choice.get("message") or {}).get("content") or ""
        for i, word in enumerate(self.verbalizers):  # no logprobs: hard label from the text
            if text.strip().casefold() and word.strip().casefold().startswith(text.strip().casefold()):
                return Annotation(hard_label=self.task.labels[i], flags="no_logprobs")
        return Annotation(error_type="not_a_label", error_message=f"the teacher answered {text[:200]!r}")
