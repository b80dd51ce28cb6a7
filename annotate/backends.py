"""Teacher backends behind one small interface, picked by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from distillery.annotate.hosted import HostedSettings, HostedTeacher
from distillery.annotate.local import LocalSettings, LocalTeacher
from distillery.annotate.teacher import Annotation, Teacher, TeacherBackend
from distillery.core.errors import UserError
from distillery.core.registry import teacher_backends
from distillery.core.tasks import TaskSpec

if TYPE_CHECKING:
    from distillery.annotate.config import AnnotateConfig

__all__ = ["build_teacher", "batch_limits", "row_char_limit", "score_rows", "teacher_batches"]

# Rows and prompt tokens per local teacher call when --teacher-batch-size / --teacher-batch-tokens
# are 0 (automatic). CPU: measured (docs/results.md, "Teacher batches"). CUDA: sized from the one H100
# run (docs/results.md, "Teacher batches"): the largest batch measured was the fastest.
AUTO_BATCH = {"cpu": (16, 0), "cuda": (512, 8192)}
HOSTED_BATCH = 16  # rows handed to the hosted backend at a time; --concurrency sets requests in flight

teacher_backends.register(
    "local",
    TeacherBackend(
        "a Hugging Face model in this process", LocalTeacher, settings=LocalSettings, local=True, online=True
    ),
)
teacher_backends.register(
    "openai",
    TeacherBackend(
        "an OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama, ...)",
        HostedTeacher,
        settings=HostedSettings,
        batch_rows=HOSTED_BATCH,
    ),
)


def build_teacher(cfg: AnnotateConfig, task: TaskSpec) -> Teacher:
    """Instantiate the backend named by ``cfg.backend`` with its settings, the task and what the run lends it;
    a teacher that is no :class:`Teacher` or lacks its methods (a plugin's mistake) is one line naming its
    backend and package."""
    teacher = teacher_backends.get(cfg.backend).build(cfg.settings, task, cfg.runtime())
    missing = [m for m in ("score", "prompt_lengths") if getattr(type(teacher), m, None) in (None, getattr(Teacher, m))]
    if missing or not isinstance(teacher, Teacher):
        package = teacher_backends.origin(cfg.backend)
        raise UserError(
            f"teacher backend '{cfg.backend}'"
            + (f" (package {package})" if package else "")
            + (f": its teacher has no {' or '.join(m + '()' for m in missing)}" if missing else "")
            + ("" if isinstance(teacher, Teacher) else f": its teacher is a {type(teacher).__name__}, not a Teacher")
            + "; a teacher derives from distillery.Teacher and gives score(texts) and prompt_lengths(texts) "
            "(docs/extending.md)"
        )
    return teacher


def batch_limits(cfg: AnnotateConfig) -> tuple[int, int]:
    """``(rows, tokens)`` per teacher call, automatic values resolved (tokens 0: no token cap)."""
    backend = teacher_backends.get(cfg.backend)
    if not backend.local:
        return cfg.teacher_batch_size or backend.batch_rows or HOSTED_BATCH, 0
    from distillery.core.models import pick_device

    rows, tokens = AUTO_BATCH[pick_device(cfg.device).type]
    return cfg.teacher_batch_size or rows, getattr(cfg.settings, "teacher_batch_tokens", 0) or tokens


def teacher_batches(lengths: list[int], max_rows: int, max_tokens: int = 0) -> list[list[int]]:
    """Row indices per teacher call, shortest rows first (rows of similar length pad least).

    A batch takes rows while it has fewer than ``max_rows`` and, when ``max_tokens`` is set,
    while ``rows x longest row`` (the padded tensor) stays within it; a row longer than the
    budget goes alone.
    """
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        batch = batches[-1] if batches else None
        fits = (
            batch is not None
            and len(batch) < max_rows
            and (not max_tokens or (len(batch) + 1) * lengths[i] <= max_tokens)
        )
        if fits:
            batch.append(i)
        else:
            batches.append([i])
    return batches


def row_char_limit(cfg: AnnotateConfig) -> tuple[int, str]:
    """``(characters, how the limit was set)``: a longer row fails before the teacher sees it."""
    max_chars = cfg.max_row_chars or 8 * cfg.max_prompt_tokens
    return max_chars, f"--max-row-chars {max_chars:,}" + (
        "" if cfg.max_row_chars else " (automatic: 8 x --max-prompt-tokens)"
    )


def score_rows(teacher: Teacher, texts: list[str], limits: tuple[int, int], max_chars: tuple[int, str], progress=None):
    """The teacher's :class:`Annotation` for each text, in order; a row longer than ``max_chars`` fails
    before the teacher tokenizes or sends it. Both engines score a chunk with this (so their chunks are
    the same); ``progress(n)`` is told of every n rows done."""
    progress = progress or (lambda n: None)
    limit, bound = max_chars
    results: list[Annotation] = [Annotation()] * len(texts)
    fits = []
    for i, text in enumerate(texts):
        if len(text) > limit:
            results[i] = Annotation(
                error_type="too_long",
                error_message=f"{len(text):,} characters > {bound}; to annotate it, raise "
                "--max-row-chars (and --max-prompt-tokens) and rerun with --retry-failed",
            )
        else:
            fits.append(i)
    progress(len(texts) - len(fits))
    # Rows of similar length batched together: less padding, ~15-25% faster on CPU.
    for batch in teacher_batches(teacher.prompt_lengths([texts[i] for i in fits]) if fits else [], *limits):
        for i, ann in zip(batch, teacher.score([texts[fits[i]] for i in batch])):
            results[fits[i]] = ann
        progress(len(batch))
    return results
