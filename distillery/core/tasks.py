"""Task definitions: label set, verbalizer words and prompt template (``data/tasks/*.yaml``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from distillery.core.errors import UserError


def _tasks_dir() -> Path:
    """The built-in task files: package data of ``distillery.data`` (the repo's ``data/`` folder,
    mapped by pyproject), read through ``importlib.resources`` in a checkout and in a wheel alike."""
    return Path(str(resources.files("distillery.data") / "tasks"))


TASKS_DIR = _tasks_dir()


@dataclass
class TaskSpec:
    """What the teacher is asked and how its answer is read.

    Args:
        name: short name, used in manifests and reports.
        labels: the label set, in column order.
        verbalizers: label -> the word the teacher should say for it (default: the label).
        system_prompt: system message (empty: the chat template's default); ``{labels}`` becomes
            "negative or positive".
        instruction: user message; ``{text}`` is the row's text, ``{labels}`` as above.
        answer_prefix: text that pre-fills the assistant turn (e.g. ``Sentiment:``); each
            label is scored as the continuation ``label_separator + verbalizer``.
        label_separator: put between the answer prefix and the verbalizer word.
        few_shot: optional ``[{text, label}]`` examples, given as earlier chat turns.
        content_free: inputs with no content, for ``--calibrate content-free``.
        case_variants: also score ``Negative`` for ``negative`` (summed), as a hosted teacher's
            case-folded top-K matching does.
    """

    name: str
    labels: list[str]
    instruction: str
    system_prompt: str = ""
    answer_prefix: str = ""
    label_separator: str = " "
    verbalizers: dict[str, str] = field(default_factory=dict)
    few_shot: list[dict[str, str]] = field(default_factory=list)
    content_free: list[str] = field(default_factory=lambda: ["N/A", "", "[MASK]"])
    case_variants: bool = False

    def __post_init__(self) -> None:
        if len(self.labels) < 2:
            raise UserError(
                f"task '{self.name}': expected at least two labels, found {self.labels}; "
                "pass --labels with the label set, comma-separated (e.g. negative,positive, or "
                "world,sports,business,sci/tech "
                "for --task topic), or fix 'labels' in the task file"
            )
        if len(set(self.labels)) != len(self.labels):
            raise UserError(f"task '{self.name}': labels repeat: {self.labels}")
        if "{text}" not in self.instruction:
            raise UserError(f"task '{self.name}': 'instruction' must contain {{text}}")
        unknown = set(self.verbalizers) - set(self.labels)
        if unknown:
            raise UserError(f"task '{self.name}': verbalizers for unknown labels {sorted(unknown)}")
        self.verbalizers = {lab: self.verbalizers.get(lab, lab) for lab in self.labels}
        for shot in self.few_shot:
            if shot.get("label") not in self.labels:
                raise UserError(f"task '{self.name}': few-shot label {shot.get('label')!r} not in {self.labels}")

    def label_words(self) -> str:
        """``negative or positive``; ``negative, neutral or positive``."""
        words = [self.verbalizers[lab] for lab in self.labels]
        return ", ".join(words[:-1]) + " or " + words[-1]

    def messages(self, text: str) -> list[dict[str, str]]:
        """Chat messages for one row (the answer prefix is added after the chat template)."""
        msgs = []
        if self.system_prompt:
            msgs.append({"role": "system", "content": self.system_prompt.format(labels=self.label_words())})
        for shot in self.few_shot:
            msgs.append({"role": "user", "content": self._user(shot["text"])})
            answer = f"{self.answer_prefix}{self.label_separator}{self.verbalizers[shot['label']]}"
            msgs.append({"role": "assistant", "content": answer.strip()})
        msgs.append({"role": "user", "content": self._user(text)})
        return msgs

    def continuations(self, label: str) -> list[str]:
        """The texts scored (and summed) for ``label`` right after the prompt."""
        sep = self.label_separator if self.answer_prefix else ""
        word = self.verbalizers[label]
        words = [word] + ([word.capitalize()] if self.case_variants and word.capitalize() != word else [])
        return [sep + w for w in words]

    def prompt_text(self, text: str, tokenizer=None) -> str:
        """The whole prompt as text: ``tokenizer``'s chat template (plain turns without one),
        then the pre-filled answer prefix."""
        msgs = self.messages(text)
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + self.answer_prefix
        return "\n\n".join(m["content"] for m in msgs) + "\n" + self.answer_prefix

    def prompt_head(self, tokenizer=None) -> str:
        """The part of :meth:`prompt_text` that comes before the row's text (same for every row)."""
        marker = "\u2063\u2063"  # invisible separators: never in the prompt around them
        rendered = self.prompt_text(marker, tokenizer)
        return rendered[: rendered.index(marker)]

    def prompt_hash(self) -> str:
        """A short hash of everything that changes what the teacher is asked."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def _user(self, text: str) -> str:
        return self.instruction.replace("{labels}", self.label_words()).replace("{text}", text)


def shared_first_tokens(task: TaskSpec, tokenize) -> list[list[str]]:
    """Groups of labels whose scored continuations start with the same token (``tokenize``: text ->
    token ids). A teacher read at its first answer token cannot tell such labels apart, and a full
    continuation score leans on the later tokens alone."""
    by_first: dict[int, list[str]] = {}
    for label in task.labels:
        ids = tokenize(task.continuations(label)[0])
        if ids:
            by_first.setdefault(ids[0], []).append(label)
    return [labels for labels in by_first.values() if len(labels) > 1]


def load_task(name_or_path: str, labels: list[str] | None = None) -> TaskSpec:
    """Load a task by name (``data/tasks/NAME.yaml``) or path; ``labels`` overrides its label set.

    Args:
        name_or_path: ``sentiment-binary`` or ``path/to/task.yaml``.
        labels: optional label list that replaces the file's (verbalizers for dropped labels go).
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = TASKS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))
        raise FileNotFoundError(
            f"task file not found: expected a task name from {known} or a YAML path; found '{name_or_path}'"
        )
    raw = yaml.safe_load(path.read_text()) or {}
    known_keys = set(TaskSpec.__dataclass_fields__)
    unknown = set(raw) - known_keys
    if unknown:
        raise UserError(f"{path}: unknown keys {sorted(unknown)}; expected some of {sorted(known_keys)}")
    if labels:
        raw["labels"] = list(labels)
        raw["verbalizers"] = {k: v for k, v in (raw.get("verbalizers") or {}).items() if k in labels}
        raw["few_shot"] = [s for s in raw.get("few_shot") or [] if s.get("label") in labels]
    return TaskSpec(**raw)
