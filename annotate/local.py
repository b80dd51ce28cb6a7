"""Local teacher: a Hugging Face causal LM scores every label in one forward pass per row."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from distillery.annotate.teacher import Annotation, Teacher, TeacherRuntime, TeacherSpec, model_setting, normalise
from distillery.core.errors import UserError
from distillery.core.models import (
    load_causal_lm,
    no_grad,
    parameter_count,
    pick_device,
    pick_dtype,
    resolve_model,
    size_on_disk,
)
from distillery.core.options import check_settings, option
from distillery.core.tasks import TaskSpec, shared_first_tokens

if TYPE_CHECKING:
    import torch


__all__ = ["LocalTeacher", "VerbalizerScorer"]


class VerbalizerScorer:
    """Scores each label's full verbalizer token sequence after a prompt.

    One forward pass over the (left-padded) prompts gives the first label token; when some
    verbalizer has more tokens, a second short pass feeds the label tokens on top of the
    prompts' KV cache (repeated once per label), so the prompt is never computed twice and
    labels whose first tokens collide are still told apart.

    With :meth:`set_prefix`, the tokens every prompt starts with (system prompt, instruction,
    few-shot examples) are run once and their KV cache is reused for every row: a causal LM's
    keys and values for a prefix do not depend on what follows, so scores are unchanged. A
    prompt that does not start with those tokens is scored in full.

    Args:
        model: a causal LM in eval mode.
        label_token_ids: for each label, the token ids of its continuation.
        pad_token_id: id used for padding (any valid id; padded positions are masked).
    """

    def __init__(self, model, label_token_ids: list[list[int]], pad_token_id: int):
        if any(len(ids) == 0 for ids in label_token_ids):
            raise UserError("every label needs at least one token")
        self.model = model
        self.label_ids = label_token_ids
        self.pad_id = pad_token_id
        self.prefix_ids: list[int] = []
        self.prefix_cache = None

    @no_grad
    def set_prefix(self, prefix_ids: list[int]) -> None:
        """Compute the KV cache of the shared prompt prefix once (an empty list turns it off)."""
        import torch

        self.prefix_ids = list(prefix_ids)
        self.prefix_cache = None
        if self.prefix_ids:
            ids = torch.tensor([self.prefix_ids], device=self.model.device)
            self.prefix_cache = self.model(input_ids=ids, use_cache=True).past_key_values

    @no_grad
    def label_logprobs(self, prompts: list[list[int]]) -> torch.Tensor:
        """Return ``(batch, n_labels)`` log P(label tokens | prompt), unnormalised over labels."""
        import torch

        n = len(self.prefix_ids)
        hit = [i for i, p in enumerate(prompts) if n and len(p) > n and p[:n] == self.prefix_ids]
        miss = sorted(set(range(len(prompts))) - set(hit))
        scores = torch.empty(len(prompts), len(self.label_ids))
        if hit:
            scores[hit] = self._score([prompts[i][n:] for i in hit], with_prefix=True)
        if miss:
            scores[miss] = self._score([prompts[i] for i in miss], with_prefix=False)
        return scores

    def _score(self, rows: list[list[int]], with_prefix: bool) -> torch.Tensor:
        import torch

        device = self.model.device
        batch, n_labels = len(rows), len(self.label_ids)
        width = max(len(p) for p in rows)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for i, ids in enumerate(rows):  # left padding: every row ends at the last column
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            mask[i, width - len(ids) :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        start = len(self.prefix_ids) if with_prefix else 0
        positions = start + (mask.cumsum(-1) - 1).clamp(min=0)
        cache = None
        if with_prefix:  # [prefix | padding | row]: the padding sits between prefix and row
            cache = copy.deepcopy(self.prefix_cache)
            cache.batch_repeat_interleave(batch)
            mask = torch.cat([torch.ones((batch, start), dtype=torch.long, device=device), mask], dim=1)
        multi = max(len(ids) for ids in self.label_ids) > 1
        # logits_to_keep=1: only the last position's logits are needed (the LM head over every
        # position would cost ~20% more for a 49k-token vocabulary).
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=multi,
            logits_to_keep=1,
        )
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        scores = first[:, [ids[0] for ids in self.label_ids]]
        if multi:
            scores = scores + self._continuation(out.past_key_values, mask, n_labels)
        return scores.cpu()

    def _continuation(self, cache, prompt_mask: torch.Tensor, n_labels: int) -> torch.Tensor:
        """log P(label tokens 2..n | prompt, token 1) for every (row, label), from the cache."""
        import torch

        device = prompt_mask.device
        batch = prompt_mask.shape[0]
        steps = max(len(ids) for ids in self.label_ids) - 1
        feed = torch.full((n_labels, steps), self.pad_id, dtype=torch.long)
        target = torch.full((n_labels, steps), -1, dtype=torch.long)
        for k, ids in enumerate(self.label_ids):
            feed[k, : len(ids) - 1] = torch.tensor(ids[:-1])
            target[k, : len(ids) - 1] = torch.tensor(ids[1:])
        feed = feed.repeat(batch, 1).to(device)  # row-major: (row0,label0), (row0,label1), ...
        target = target.repeat(batch, 1).to(device)
        cache.batch_repeat_interleave(n_labels)
        rep_mask = prompt_mask.repeat_interleave(n_labels, dim=0)
        full_mask = torch.cat([rep_mask, (target >= 0).long()], dim=1)
        start = rep_mask.sum(-1, keepdim=True)
        positions = start + torch.arange(steps, device=device)
        out = self.model(input_ids=feed, attention_mask=full_mask, position_ids=positions, past_key_values=cache)
        logp = torch.log_softmax(out.logits.float(), dim=-1)
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        picked = picked.masked_fill(target < 0, 0.0)
        return picked.sum(-1).view(batch, n_labels)


@dataclass
class LocalSettings:
    """The settings of the ``local`` backend (a Hugging Face model in this process), registered with it."""

    # Settings a rerun may change without changing the teacher's answers (the others are part of the
    # run's fingerprint: a change is refused, naming --restart-annotations).
    SAME_ANSWERS: ClassVar[tuple] = ("teacher_batch_tokens", "prefix_cache")

    teacher: str = model_setting()
    teacher_batch_tokens: int = option(
        0,
        "local teacher: most prompt tokens per forward pass, counted as rows x the longest row's "
        "tokens after the cached prefix (0 = automatic: no cap on CPU, 8192 on CUDA)",
        ge=0,
        short="tokens per forward pass (0 = auto)",
    )
    prefix_cache: bool = option(
        True,
        "local teacher: run the prompt part shared by every row once and reuse its KV cache (same scores, faster)",
        short="no KV cache of the shared prompt prefix",
    )
    dtype: str = option(
        "auto",
        "teacher dtype: auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16",
        choices=("auto", "float32", "bfloat16", "float16"),
        short="auto, float32, bfloat16, float16",
        metavar="DTYPE",
    )
    load_in_4bit: bool = option(
        False,
        "load the teacher in 4 bit with bitsandbytes (CUDA only)",
        short="teacher in 4 bit (bitsandbytes, CUDA)",
    )

    def __post_init__(self) -> None:
        check_settings(self)


class LocalTeacher(Teacher):
    """A local Hugging Face causal LM as teacher (``--teacher smollm2``, a dir, a GGUF or a hub id)."""

    def __init__(self, settings: LocalSettings, task: TaskSpec, runtime: TeacherRuntime):
        device = pick_device(runtime.device)
        self.dtype = pick_dtype(settings.dtype, device)
        self.model_name = settings.teacher
        self.tokenizer, model = load_causal_lm(settings.teacher, device, self.dtype, settings.load_in_4bit)
        self.task = task
        self.max_prompt_tokens = runtime.max_prompt_tokens
        self.has_template = bool(getattr(self.tokenizer, "chat_template", None))
        sequences, self.groups = [], []  # every continuation of every label, and its label index
        for k, lab in enumerate(task.labels):
            for text in task.continuations(lab):
                sequences.append(self.tokenizer(text, add_special_tokens=False).input_ids)
                self.groups.append(k)
        for group in shared_first_tokens(task, lambda s: self.tokenizer(s, add_special_tokens=False).input_ids):
            print(
                f"annotate: warning: labels {', '.join(repr(g) for g in group)} start with the same token "
                "for this teacher; "
                "its first answer token cannot tell them apart: give them verbalizers that start differently "
                "(verbalizers: in the task file)"
            )
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.scorer = VerbalizerScorer(model, sequences, pad if pad is not None else 0)
        if settings.prefix_cache:
            self.scorer.set_prefix(self.shared_prefix_ids())
        self.tokenized: dict[str, list[int]] = {}  # prompt ids of the rows measured by prompt_lengths()

    def spec(self) -> TeacherSpec:
        """The model, its parameters and its size on disk (evaluate's report)."""
        parameters = parameter_count(self.scorer.model)[1]
        return TeacherSpec(
            model=self.model_name,
            description=f"{self.model_name} in this process ({str(self.dtype).removeprefix('torch.')})",
            parameters=parameters,
            size_bytes=size_on_disk(resolve_model(self.model_name)),
        )

    def prompt_text(self, text: str) -> str:
        """The full prompt: chat template (or plain turns), then the pre-filled answer prefix."""
        return self.task.prompt_text(text, self.tokenizer if self.has_template else None)

    def prompt_ids(self, text: str) -> list[int]:
        """Token ids of the full prompt."""
        return self.tokenizer(self.prompt_text(text), add_special_tokens=not self.has_template).input_ids

    def prompt_lengths(self, texts: list[str]) -> list[int]:
        """Tokens each row's forward pass computes: its prompt less the cached shared prefix.

        Tokenizes all ``texts`` in one call (the fast tokenizer's batch path) and keeps the ids
        for :meth:`score`, so batching by tokens costs no second tokenization.
        """
        ids = self.tokenizer([self.prompt_text(t) for t in texts], add_special_tokens=not self.has_template).input_ids
        self.tokenized = dict(zip(texts, ids))
        prefix = self.scorer.prefix_ids
        return [len(x) - len(prefix) if prefix and x[: len(prefix)] == prefix else len(x) for x in ids]

    def shared_prefix_ids(self) -> list[int]:
        """Tokens every prompt starts with: the prompt up to the row's text, less its last token.

        The last token is dropped because it may merge with the text's first characters (e.g.
        "\n\n" + "Hi"); rows whose prompt still does not start with these ids are scored in full.
        """
        head = self.task.prompt_head(self.tokenizer if self.has_template else None)
        return self.tokenizer(head, add_special_tokens=not self.has_template).input_ids[:-1]

    def score(self, texts: list[str]) -> list[Annotation]:
        """Annotate a batch; rows that fail come back as error annotations, never as exceptions."""
        prompts = [self.tokenized.get(t) or self.prompt_ids(t) for t in texts]
        results: list[Annotation | None] = [None] * len(texts)
        ok = []
        for i, ids in enumerate(prompts):
            if len(ids) > self.max_prompt_tokens:
                results[i] = Annotation(
                    error_type="prompt_too_long",
                    error_message=f"{len(ids)} prompt tokens > --max-prompt-tokens {self.max_prompt_tokens}",
                )
            else:
                ok.append(i)
        if ok:
            try:
                for i, ann in zip(ok, self._score_ids([prompts[i] for i in ok])):
                    results[i] = ann
            except (RuntimeError, ValueError) as err:  # e.g. out of memory: retry rows one by one
                if len(ok) == 1:
                    results[ok[0]] = Annotation(
                        error_type=type(err).__name__, error_message=str(err).splitlines()[0][:300]
                    )
                else:
                    for i in ok:
                        results[i] = self.score([texts[i]])[0]
        return results  # type: ignore[return-value]

    def _score_ids(self, prompts: list[list[int]]) -> list[Annotation]:
        import torch

        scores = self.scorer.label_logprobs(prompts)  # (batch, n_sequences)
        groups = torch.tensor(self.groups)
        per_label = torch.stack(
            [torch.logsumexp(scores[:, groups == k], dim=1) for k in range(len(self.task.labels))], dim=1
        )
        return [normalise(row.tolist()) for row in per_label]
