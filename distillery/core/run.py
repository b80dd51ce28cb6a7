"""A run: one folder that every stage reads and writes, its layout spelled here and nowhere else.

    data/runs/demo/                  --out
        annotations/                 --annotations (default OUT/annotations): part-*.csv, manifest.json
        student/                     --student (default OUT/student): the student distill saved
        student-onnx/                export's ONNX student (--onnx-dir; default STUDENT-onnx)
        learning_curve/              students on shares of the rows (distill --learning-curve, active's rounds)
        review/                      review queues and the imported answers
        active/                      the active loop's state and selected rows
        report.md, metrics.json, evaluate_config.yaml, reliability.png, coverage.png   evaluate
        merged.csv                   annotate --only-deferred

and the settings every stage shares (:data:`SHARED`): each is declared once, with one help text,
and a stage's config takes the ones it reads with :func:`shared`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distillery.core.options import SEED_MAX, option

__all__ = ["Run", "SHARED", "shared"]


@dataclass(frozen=True)
class Run:
    """The paths of one run folder.

    Args:
        out: the run folder (``--out``).
        annotations_dir: ``--annotations`` where a user moved them ("" = OUT/annotations).
        student_dir: ``--student`` where a user moved it ("" = OUT/student).
    """

    out: Path
    annotations_dir: str = ""
    student_dir: str = ""

    @classmethod
    def of(cls, cfg) -> Run:
        """The run a stage's config names (its ``out``, and ``annotations``/``student`` where it has them)."""
        return cls(Path(cfg.out), getattr(cfg, "annotations", "") or "", getattr(cfg, "student", "") or "")

    @property
    def annotations(self) -> Path:
        return Path(self.annotations_dir) if self.annotations_dir else self.out / "annotations"

    @property
    def manifest(self) -> Path:
        return self.annotations / "manifest.json"

    @property
    def student(self) -> Path:
        return Path(self.student_dir) if self.student_dir else self.out / "student"

    @property
    def onnx(self) -> Path:
        """export's default ONNX folder: STUDENT-onnx, beside the student."""
        return Path(f"{self.student.resolve()}-onnx")

    @property
    def learning_curve(self) -> Path:
        """The students trained on shares of the rows: beside the student."""
        return self.student.parent / "learning_curve"

    @property
    def ceiling(self) -> Path:
        """The same student trained on the gold labels (distill --ceiling): beside the student."""
        return self.student.parent / f"{self.student.name}-gold-ceiling"

    def share_student(self, name: str) -> Path:
        """One learning-curve student (``student-25pct``, ``student-round-003``)."""
        return self.learning_curve / f"student-{name}"

    @property
    def review(self) -> Path:
        return self.out / "review"

    @property
    def active(self) -> Path:
        return self.out / "active"

    @property
    def report(self) -> Path:
        return self.out / "report.md"

    @property
    def metrics(self) -> Path:
        return self.out / "metrics.json"

    @property
    def evaluate_config(self) -> Path:
        return self.out / "evaluate_config.yaml"

    def plot(self, name: str) -> Path:
        """One of evaluate's plots (``reliability.png``, ``coverage.png``)."""
        return self.out / name

    @property
    def merged(self) -> Path:
        """annotate --only-deferred: the student's labels where it answered, the teacher's where it deferred."""
        return self.out / "merged.csv"

    @staticmethod
    def predictions(given: Path) -> Path:
        """predict's output: ``--predictions FILE``, or DIR/predictions.csv for a folder."""
        return given / "predictions.csv" if given.is_dir() else given


# The settings several stages share: name -> (default, whole help, short help, group, checks). A stage
# that reads one declares it with shared(name), so its help is written once.
SHARED = {
    "out": (
        "data/runs/demo",
        "the run folder: annotations, student, report and metrics go under it",
        "run folder",
        "input",
        {"form": "path", "shown": "common", "metavar": "DIR"},
    ),
    "data": (
        "",
        "input: a .csv/.tsv/.jsonl/.json/.parquet file, 'tweets' (built in), or hf:NAME (a Hugging Face dataset)",
        "input file, 'tweets' or hf:NAME",
        "input",
        {"form": "data", "shown": "common", "metavar": "FILE"},
    ),
    "hf_config": (
        "",
        "config name of an hf: dataset (e.g. sst2 for hf:glue)",
        "config of an hf: dataset (e.g. sst2)",
        "input",
        {},
    ),
    "split": ("train", "split of an hf: dataset", "split of an hf: dataset", "input", {}),
    "text_column": ("text", "column that holds the text", "column with the text", "input", {"shown": "common"}),
    "id_column": (
        "",
        "column with row ids, kept in the output (default: annotate hashes the text, a stable id; predict numbers "
        "the rows from 0 in input order)",
        "column with row ids",
        "input",
        {},
    ),
    "drop_empty": (
        False,
        "skip rows with empty text instead of stopping with an error",
        "skip rows with empty text",
        "input",
        {},
    ),
    "annotations": (
        "",
        "the annotations folder (default OUT/annotations)",
        "annotations folder (OUT/annotations)",
        "input",
        {"form": "path", "metavar": "DIR"},
    ),
    "student": (
        "",
        "the student folder (default OUT/student)",
        "student folder (OUT/student)",
        "student",
        {"form": "path", "shown": "common", "metavar": "DIR"},
    ),
    "seed": (
        0,
        "seed for sampling, the train/test split, shuffling and initialisation",
        "seed for sampling, splits, training",
        "input",
        {"ge": 0, "le": SEED_MAX, "shown": "common"},
    ),
    "device": (
        "auto",
        "auto, cpu, cuda or cuda:N (an ONNX student runs on the CPU)",
        "auto, cpu, cuda or cuda:N",
        "device",
        {"form": "device", "shown": "common", "metavar": "DEVICE"},
    ),
    "engine": (
        "local",
        "where the work runs: local (this process) or ray (workers on a Ray cluster: pip install "
        "'distillery[ray]'; docs/scale.md)",
        "local, or ray (a Ray cluster)",
        "device",
        {"choices": ("local", "ray"), "shown": "common"},
    ),
    "ray_address": (
        "",
        "--engine ray: the cluster to use: empty starts a Ray runtime on this machine, 'auto' joins the cluster "
        "this machine belongs to (ray start), or ray://HOST:10001",
        "'' (start one here), auto or ray://HOST:10001",
        "device",
        {"form": "ray_address"},
    ),
    "workers": (
        1,
        "--engine ray: how many workers",
        "--engine ray: workers (sizes: --help-all)",
        "device",
        {"ge": 1, "shown": "common"},
    ),
    "worker_cpus": (
        1.0,
        "--engine ray: CPUs each worker reserves (also its torch threads)",
        "CPUs per worker (and its threads)",
        "device",
        {"gt": 0.0, "shown": "rare"},
    ),
    "worker_gpus": (
        0.0,
        "--engine ray: GPUs each worker reserves (1 for a teacher on a GPU of its own; 0.5 shares one by two)",
        "GPUs per worker",
        "device",
        {"ge": 0.0, "shown": "rare"},
    ),
    "overwrite": (
        False,
        "write into folders that hold files Distillery did not write, beside them: those are never replaced "
        "or deleted (to annotate again from the start: --restart-annotations)",
        "write beside files that are not distillery's",
        "output",
        {"shown": "common"},
    ),
}


def shared(name: str, default=None, **more):
    """The dataclass field of the shared setting ``name`` (:data:`SHARED`); ``default``: the reading stage's
    own where it differs; ``more``: that stage's own :func:`~distillery.core.options.option` metadata
    (``online``, ``rows``, ...)."""
    value, help_text, short, group, checks = SHARED[name]
    return option(value if default is None else default, help_text, short=short, group=group, **checks, **more)
