"""Hosted teacher over the OpenAI-compatible chat API (OpenAI, Together, vLLM, Ollama, llama.cpp).

Soft labels come from the first answer token's ``top_logprobs``: tokens are stripped,
case-folded and matched to the label whose verbalizer they begin; their probabilities are
summed per label and renormalised over the label set. A label absent from the top-K gets
no invented number: its log-prob is bounded above by the smallest returned log-prob, that
bound is stored and the row is flagged ``bounded:<label>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import sqlite3
from pathlib import Path

from annotate.config import AnnotateConfig
from annotate.local import Annotation
from annotate.tasks import TaskSpec

__all__ = ["HostedTeacher", "AuthError", "labels_from_top_logprobs"]

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class AuthError(PermissionError):
    """The server refused the API key: the run stops at once."""


class ServerConfigError(ConnectionError):
    """The very first requests all failed the same way (no server there, unknown model, ...)."""


def labels_from_top_logprobs(top: list[tuple[str, float]], verbalizers: list[str]) -> tuple[list[float], float, list[str]]:
    """Per-label log-probs from ``(token, logprob)`` pairs of one position.

    Returns ``(logprobs renormalised over the labels, covered mass, labels bounded)``.
    """
    words = [v.strip().casefold() for v in verbalizers]
    mass = [0.0] * len(words)
    for token, logprob in top:
        t = token.strip().casefold()
        hits = [i for i, w in enumerate(words) if t and w.startswith(t)]
        if len(hits) == 1:  # a token that begins two labels tells them apart not at all
            mass[hits[0]] += math.exp(logprob)
    floor = min(lp for _, lp in top) if top else -math.inf
    bounded = [verbalizers[i].strip() for i, m in enumerate(mass) if m == 0.0]
    raw = [math.log(m) if m > 0 else floor for m in mass]
    covered = sum(mass)
    total = math.log(sum(math.exp(x) for x in raw)) if any(math.isfinite(x) for x in raw) else -math.inf
    return [x - total for x in raw], covered, bounded


class RequestCache:
    """answers already received, keyed by everything that shapes the answer (SQLite)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, body TEXT)")

    @staticmethod
    def key(request: dict) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT body FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, body: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, json.dumps(body)))
        self.db.commit()


class HostedTeacher:
    """Labels rows through an OpenAI-compatible ``/chat/completions`` endpoint.

    One retry policy (tenacity: exponential backoff with jitter on 429, 5xx, timeouts and
    dropped connections, honouring ``Retry-After``); the client's own retries are off. Requests
    that cannot succeed (400, 403, 404, context too long) become error rows with the server's
    message; a refused key (401) stops the run.
    """

    returns_logprobs = True

    def __init__(self, cfg: AnnotateConfig, task: TaskSpec):
        try:
            import openai  # noqa: F401
            import tenacity  # noqa: F401
        except ImportError:
            raise ImportError("the hosted teacher needs openai and tenacity: pip install 'distillery[hosted]'") from None
        if not cfg.base_url:
            raise ValueError("--backend openai: expected --base-url (e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1)")
        self.cfg, self.task = cfg, task
        self.api_key = os.environ.get(cfg.api_key_env, "") or "no-key"
        self.verbalizers = [task.verbalizers[lab] for lab in task.labels]
        self.cache = RequestCache(Path(cfg.out) / "annotations" / "request_cache.sqlite")
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests_sent": 0, "cache_hits": 0}
        self.answered = 0  # rows answered in this run; until one is, a uniform failure stops the run

    def _request(self, text: str) -> dict:
        return {
            "model": self.cfg.teacher, "messages": self.task.messages(text), "temperature": 0.0, "max_tokens": 1,
            "logprobs": True, "top_logprobs": self.cfg.top_logprobs,
        }

    def _safe(self, message: str) -> str:
        return message.replace(self.api_key, "***") if self.api_key != "no-key" else message

    def score(self, texts: list[str]) -> list[Annotation]:
        """Annotate a batch. If nothing has been answered yet and every row failed the same way
        (wrong URL, unknown model), stop with one line instead of writing a chunk of errors."""
        out = asyncio.run(self._score_all(texts))
        self.answered += sum(a.error_type == "" for a in out)
        kinds = {a.error_type for a in out}
        if not self.answered and len(kinds) == 1 and "" not in kinds:
            raise ServerConfigError(f"every request to {self.cfg.base_url} failed ({out[0].error_type}: {out[0].error_message[:200]}); "
                                    "check --base-url and --teacher (the model name)")
        return out

    async def _score_all(self, texts: list[str]) -> list[Annotation]:
        import openai

        client = openai.AsyncOpenAI(
            base_url=self.cfg.base_url, api_key=self.api_key, max_retries=0, timeout=self.cfg.request_timeout,
            default_headers=dict(h.split(":", 1) for h in self.cfg.extra_headers) if self.cfg.extra_headers else None,
        )
        gate = asyncio.Semaphore(self.cfg.concurrency)
        try:
            return list(await asyncio.gather(*(self._one(client, gate, t) for t in texts)))
        finally:
            await client.close()

    async def _one(self, client, gate: asyncio.Semaphore, text: str) -> Annotation:
        import openai
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

        request = self._request(text)
        key = RequestCache.key({"base_url": self.cfg.base_url, **request})
        body = self.cache.get(key)
        if body is not None:
            self.usage["cache_hits"] += 1
            return self._parse(body)

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
                async for attempt in AsyncRetrying(retry=retry_if_exception(retryable), wait=wait, stop=stop_after_attempt(self.cfg.max_retries + 1), reraise=True):
                    with attempt:
                        self.usage["requests_sent"] += 1
                        response = await client.chat.completions.create(**request)
        except openai.AuthenticationError:
            raise AuthError(f"the server at {self.cfg.base_url} refused the API key from ${self.cfg.api_key_env} (401); set a valid key") from None
        except openai.APIStatusError as err:
            return Annotation(error_type=f"http_{err.status_code}", error_message=self._safe(str(err))[:300])
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            return Annotation(error_type=type(err).__name__, error_message=self._safe(str(err))[:300])
        body = response.model_dump()
        self.cache.put(key, body)
        return self._parse(body)

    def _parse(self, body: dict) -> Annotation:
        usage = body.get("usage") or {}
        self.usage["prompt_tokens"] += usage.get("prompt_tokens") or 0
        self.usage["completion_tokens"] += usage.get("completion_tokens") or 0
        choice = body["choices"][0]
        content = ((choice.get("logprobs") or {}).get("content")) or []
        if content and content[0].get("top_logprobs"):
            top = [(t["token"], t["logprob"]) for t in content[0]["top_logprobs"]]
            logprobs, covered, bounded = labels_from_top_logprobs(top, self.verbalizers)
            if not any(math.isfinite(x) for x in logprobs):
                return Annotation(error_type="no_label_in_top_logprobs", error_message=f"top tokens: {[t for t, _ in top[:5]]}")
            return Annotation(logprobs=logprobs, mass=covered, flags=";".join(f"bounded:{b}" for b in bounded))
        text = (choice.get("message") or {}).get("content") or ""
        for i, word in enumerate(self.verbalizers):  # no logprobs: hard label from the text
            if text.strip().casefold() and word.strip().casefold().startswith(text.strip().casefold()):
                return Annotation(hard_label=self.task.labels[i], flags="no_logprobs")
        return Annotation(error_type="not_a_label", error_message=f"the teacher answered {text[:200]!r}")
