"""The ``distillery`` command: annotate, distill, evaluate, or run all three; then predict and export.

    distillery run                                   # the embedded demo (tweets, SmolLM2 -> MiniLM)
    distillery run --data reviews.csv --labels negative,positive --out data/runs/reviews
    distillery annotate --config my.yaml --limit 500
    distillery distill --out data/runs/reviews --alpha 0.8
    distillery evaluate --out data/runs/reviews
    distillery predict --out data/runs/reviews --data new.csv --predictions preds.csv --defer
    distillery export --out data/runs/reviews                       # ONNX, the fastest variant that keeps the labels
    distillery active --data pool.csv --budget 2000 --out data/runs/active
    distillery review --out data/runs/reviews                       # 200 rows for a person to label
    distillery review --out data/runs/reviews --import export.json  # their answers: the run's gold labels

Every subcommand takes --config FILE.yaml (flat keys, named like the flags with underscores);
flags win over the file; one file serves every stage; unknown keys are errors.
--out is the run folder and --student the student folder (default OUT/student) everywhere.

Exit codes: 0 done; 2 a mistake in the input, a setting or a file (one line says what to fix);
130 interrupted (rerun to resume); 1 a bug in Distillery (its traceback is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from distillery.active.config import ActiveConfig
from distillery.annotate.config import AnnotateConfig
from distillery.core.errors import UserError
from distillery.core.options import coerce, read_config
from distillery.core.registry import teacher_backends
from distillery.distill.config import DistillConfig
from distillery.distill.students import student_kind
from distillery.evaluation.config import EvaluateConfig
from distillery.review.config import ReviewConfig
from distillery.serve.config import ExportConfig, PredictConfig

# The settings of annotate that distill reads for --teacher-mode online (the rows and the teacher).
ONLINE_TEACHER = (
    "data",
    "hf_config",
    "split",
    "text_column",
    "label_column",
    "split_column",
    "id_column",
    "limit",
    "balance",
    "drop_empty",
    "test_fraction",
    "task",
    "labels",
    "backend",
    "teacher",
    "teacher_batch_size",
    "prefix_cache",
    "max_prompt_tokens",
    "calibrate",
    "dtype",
    "load_in_4bit",
)

# Each subcommand: its help line and the config classes it builds, in order (a class with a tuple
# of names contributes only those fields).
STAGES = {
    "annotate": ("ask the teacher for labels and label log-probs; write OUT/annotations/part-*.csv", (AnnotateConfig,)),
    "distill": (
        "train a student on OUT/annotations with the hybrid KD loss; save it to --student",
        (DistillConfig, (AnnotateConfig, ONLINE_TEACHER)),
    ),
    "evaluate": ("compare students, teacher and gold; write OUT/report.md and OUT/metrics.json", (EvaluateConfig,)),
    "run": (
        "annotate, distill and evaluate in one go (no arguments: the embedded demo)",
        (AnnotateConfig, DistillConfig, EvaluateConfig),
    ),
    "predict": (
        "label new rows with a saved student (encoder, LoRA, merged or ONNX); write a predictions CSV",
        (PredictConfig,),
    ),
    "export": (
        "export a saved student to ONNX for onnxruntime: the fastest variant (int8, ...) that keeps its labels",
        (ExportConfig,),
    ),
    "active": (
        "ask the teacher only about the rows the student is unsure of, round by round, within --budget",
        (ActiveConfig, AnnotateConfig, DistillConfig, EvaluateConfig),
    ),
    "review": (
        "write a queue of rows for a person to label (Label Studio, Argilla, CSV); --import their answers as "
        "gold labels",
        (ReviewConfig,),
    ),
}

# The help groups. A setting's name has one meaning in every subcommand, so it has one group.
GROUPS = {
    "input": (
        "input rows",
        "out data hf_config split text_column label_column split_column id_column limit balance drop_empty "
        "test_fraction seed annotations hard_labels max_train_rows students eval_split",
    ),
    "task": ("task", "task labels"),
    "teacher": (
        "teacher",
        "backend teacher teacher_batch_size teacher_batch_tokens prefix_cache max_prompt_tokens "
        "max_row_chars retry_failed dtype load_in_4bit "
        "teacher_mode",
    ),
    "hosted": (
        "hosted teacher (--backend openai)",
        "base_url api_key_env extra_headers request_timeout hosted_scoring template_from "
        "top_logprobs concurrency requests_per_minute tokens_per_minute max_retries "
        "price_prompt_per_m price_completion_per_m max_cost dry_run",
    ),
    "calibration": ("teacher calibration", "calibrate calibrate_on"),
    "student": (
        "student",
        "student student_kind student_model lora_r lora_alpha lora_dropout lora_targets qlora merge defer "
        "defer_threshold",
    ),
    "training": (
        "training",
        "alpha temperature lr weight_decay class_weights batch_size grad_accum max_length epochs min_steps "
        "head_warmup_epochs "
        "learning_curve warmup_ratio max_grad_norm val_fraction evals_per_epoch group_by_length "
        "checkpoint_every resume",
    ),
    "active": (
        "active loop",
        "budget budget_cost strategy test_rows seed_rows round_rows patience min_gain pool_chunk warm_start",
    ),
    "review": ("review queue", "review_rows random_share import_file"),
    "evaluation": ("evaluation", "speed_rows eval_batch_size target_agreement push_to_hub"),
    "output": (
        "output",
        "predictions predict_batch_size onnx_dir variant min_parity check_rows chunk_size only_deferred overwrite",
    ),
    "device": ("device", "device"),
}
# One line of --help per setting (the dataclass field's help is the whole text: --help-all, docs/usage.md).
SHORT_HELP = {
    "out": "run folder",
    "data": "input file, 'tweets' or hf:NAME",
    "hf_config": "config of an hf: dataset (e.g. sst2)",
    "split": "split of an hf: dataset",
    "text_column": "column with the text",
    "label_column": "column with gold labels",
    "split_column": "column with train/test per row",
    "id_column": "column with row ids",
    "limit": "at most N rows (0 = all)",
    "balance": "same number of rows per gold label",
    "drop_empty": "skip rows with empty text",
    "test_fraction": "share of rows held out as test",
    "seed": "seed for sampling, splits, training",
    "task": "task name or task YAML file",
    "labels": "labels, comma-separated",
    "backend": "teacher backend",
    "teacher": "smollm2, hub id, folder or .gguf",
    "teacher_batch_size": "rows per teacher call (0 = auto)",
    "teacher_batch_tokens": "tokens per forward pass (0 = auto)",
    "prefix_cache": "no KV cache of the shared prompt prefix",
    "max_prompt_tokens": "longer prompts become error rows",
    "max_row_chars": "longer rows fail at once (0 = auto)",
    "retry_failed": "retry rows that failed for good",
    "dtype": "auto, float32, bfloat16, float16",
    "load_in_4bit": "teacher in 4 bit (bitsandbytes, CUDA)",
    "base_url": "server URL (…/v1)",
    "api_key_env": "variable that holds the API key",
    "extra_headers": "HTTP headers 'Name: value',…",
    "request_timeout": "seconds per request (then retried)",
    "hosted_scoring": "top-logprobs or echo (vLLM, llama.cpp)",
    "template_from": "echo: model whose chat template to use",
    "top_logprobs": "top tokens' log-probs to ask for",
    "concurrency": "requests in flight",
    "requests_per_minute": "requests a minute (0 = no limit)",
    "tokens_per_minute": "tokens a minute (0 = no limit)",
    "max_retries": "retries on 429, 5xx, timeouts",
    "price_prompt_per_m": "price per million prompt tokens",
    "price_completion_per_m": "price per million completion tokens",
    "max_cost": "stop once this much is spent (0 = none)",
    "dry_run": "estimate tokens and cost; send nothing",
    "calibrate": "teacher calibration",
    "calibrate_on": "gold rows a gold mode fits on",
    "chunk_size": "rows per chunk (the unit of resume)",
    "overwrite": "replace what is not this run's",
    "only_deferred": "only the rows predict --defer deferred",
    "device": "auto, cpu, cuda or cuda:N",
    "annotations": "annotations folder (OUT/annotations)",
    "student": "student folder (OUT/student)",
    "student_kind": "student kind",
    "student_model": "checkpoint (default per kind)",
    "hard_labels": "hard labels for the CE part",
    "max_train_rows": "train on at most N rows (0 = all)",
    "alpha": "KD weight (0 = hard labels, 1 = pure KD)",
    "temperature": "KD temperature T",
    "lr": "learning rate (0 = the kind's default)",
    "weight_decay": "AdamW weight decay",
    "class_weights": "row weights by class: none, balanced, auto",
    "batch_size": "training rows per optimizer step",
    "grad_accum": "micro-batches per optimizer step",
    "max_length": "tokens per text (0 = 95% of rows)",
    "epochs": "passes over the rows, at least",
    "min_steps": "optimizer steps, at least",
    "head_warmup_epochs": "LP-FT: head-only epochs first",
    "learning_curve": "also train on 25% and 50% of rows",
    "warmup_ratio": "share of steps warming up",
    "max_grad_norm": "gradient clipping norm",
    "val_fraction": "rows held out to pick the best step",
    "evals_per_epoch": "validation passes per epoch",
    "group_by_length": "no batching by text length",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA alpha",
    "lora_dropout": "LoRA dropout",
    "lora_targets": "modules with LoRA adapters",
    "qlora": "QLoRA: 4-bit base (CUDA)",
    "teacher_mode": "soft labels from OUT or the teacher",
    "merge": "also save STUDENT/merged",
    "checkpoint_every": "checkpoint every N steps (0 = never)",
    "resume": "continue from STUDENT/checkpoint",
    "students": "student folders, comma-separated",
    "eval_split": "rows to score: test, train or all",
    "speed_rows": "rows to time the models on",
    "eval_batch_size": "student batch size",
    "target_agreement": "defer: agreement to keep (0 = skip)",
    "push_to_hub": "upload the student to this hub repo",
    "predictions": "output CSV",
    "predict_batch_size": "rows per forward pass",
    "defer": "mark rows under evaluate's threshold",
    "defer_threshold": "confidence under which rows defer",
    "onnx_dir": "ONNX folder (STUDENT-onnx)",
    "variant": "auto, int8, int8-ffn-fp32, fp32",
    "min_parity": "share of rows that must keep the label",
    "check_rows": "rows the variants are checked on",
    "budget": "teacher calls in all",
    "budget_cost": "stop once this much is spent (0 = none)",
    "strategy": "which pool rows go to the teacher",
    "test_rows": "random rows held out to score rounds",
    "seed_rows": "rows the first student trains on",
    "round_rows": "rows sent to the teacher per round",
    "patience": "rounds without --min-gain (0 = none)",
    "min_gain": "agreement gain that counts",
    "pool_chunk": "pool rows scored at a time",
    "warm_start": "start from the previous round's student",
    "review_rows": "rows in a new review queue",
    "random_share": "share drawn at random from test rows",
    "import_file": "import a labelled queue (LS, Argilla, CSV)",
}

GROUP_OF = {name: group for group, (_, names) in GROUPS.items() for name in names.split()}

# Shown by `run --help` and `active --help` (the rest: --help-all); every other subcommand shows all its flags.
COMMON = set(
    "out data text_column label_column split_column limit labels task backend teacher base_url calibrate "
    "device overwrite seed "
    "student student_kind student_model alpha temperature epochs lr batch_size max_length teacher_mode eval_split "
    "target_agreement budget strategy test_rows seed_rows round_rows dry_run max_cost".split()
)

# Old spellings: an error naming the new one (a flag here is not also a setting of that subcommand).
RENAMED = {
    "distill": {"--output-dir": "--student (the student folder)"},
    "run": {"--output-dir": "--student (the student folder)"},
    "active": {"--output-dir": "--student (the student folder)"},
    "predict": {"--batch-size": "--predict-batch-size"},
    "export": {"--output-dir": "--onnx-dir"},
}
RENAMED_KEYS = {"output_dir": "student (distill's student folder) or onnx_dir (export's ONNX folder)"}


def stage_fields(command: str) -> dict[str, dataclasses.Field]:
    """The settings a subcommand reads, by name (a name two stages share means the same thing)."""
    out: dict[str, dataclasses.Field] = {}
    for entry in STAGES[command][1]:
        cls, names = entry if isinstance(entry, tuple) else (entry, None)
        for f in dataclasses.fields(cls):
            if names is None or f.name in names:
                out.setdefault(f.name, f)
    return out


def stage_configs(command: str) -> list[type]:
    """The config classes a subcommand builds, in the order ``run_stages`` takes them."""
    return [entry[0] if isinstance(entry, tuple) else entry for entry in STAGES[command][1]]


def _shown_default(f: dataclasses.Field) -> str:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if (
        isinstance(default, bool)
        or default is None
        or default in ("", [])
        or (isinstance(default, (int, float)) and default == -1)
    ):
        return ""
    return f" [{','.join(default) if isinstance(default, list) else default}]"


METAVARS = {"int": "N", "float": "X", "str": "VALUE", "list[str]": "A,B"}
METAVAR_OF = {
    "import_file": "FILE",
    "out": "DIR",
    "student": "DIR",
    "annotations": "DIR",
    "onnx_dir": "DIR",
    "data": "FILE",
    "predictions": "FILE",
    "teacher": "MODEL",
    "student_model": "MODEL",
    "template_from": "MODEL",
    "task": "NAME",
    "calibrate": "MODE",
    "strategy": "NAME",
    "device": "DEVICE",
    "dtype": "DTYPE",
    "base_url": "URL",
    "api_key_env": "NAME",
    "push_to_hub": "REPO",
}


def _add_flag(group, f: dataclasses.Field, full: bool, shown: bool) -> None:
    """One setting as a flag. A bool is --name (or --no-name where it defaults to on); the other
    spelling is accepted but not listed."""
    flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
    registry = f.metadata.get("registry")
    text = f.metadata.get("help", "")
    if registry is not None and full:
        text = f"{text} ({registry.describe()})"
    if not full:
        text = SHORT_HELP[f.name]  # every setting has one (tests/test_cli_help.py)
        text += f": {', '.join(registry.names())}" if registry is not None and len(registry.names()) > 3 else ""
    text += _shown_default(f)
    help_text = text.replace("%", "%%") if shown else argparse.SUPPRESS
    kind = str(f.type)
    if kind in ("bool", "bool | None"):
        on = f.default is True
        if on and full and shown:
            help_text = f"on by default, this turns it off; {help_text}"
        group.add_argument(
            "--no-" + flag[2:] if on else flag,
            dest=f.name,
            action="store_false" if on else "store_true",
            default=None,
            help=help_text,
        )
        group.add_argument(
            flag if on else "--no-" + flag[2:],
            dest=f.name,
            action="store_true" if on else "store_false",
            default=None,
            help=argparse.SUPPRESS,
        )
        return
    metavar = (
        "|".join(registry.names())
        if registry is not None and len(registry.names()) <= 3
        else "|".join(f.metadata["choices"])
        if f.metadata.get("choices") and len(f.metadata["choices"]) <= 3
        else METAVAR_OF.get(f.name) or METAVARS.get(kind, "VALUE")
    )
    group.add_argument(
        flag, dest=f.name, default=None, metavar=metavar, help=help_text
    )  # converted and checked by coerce()


class _Renamed(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was renamed: use {self.const}")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """One line per flag on an 80-column terminal (the help column starts at 26)."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=26, width=max(shutil.get_terminal_size((100, 24)).columns, 80))


ONLINE_SHOWN = ("teacher", "task", "labels", "data", "calibrate", "backend")  # distill --help; the rest with --help-all


def _help_groups(command: str, full: bool) -> list[tuple[str, list, list]]:
    """``(title, shown fields, hidden fields)`` per help group of a subcommand. distill puts the
    online teacher's settings in a group of their own; run and active hide the rarely used flags."""
    fields = stage_fields(command)
    online = {
        n
        for n in ONLINE_TEACHER
        if command == "distill" and n not in {f.name for f in dataclasses.fields(DistillConfig)}
    }
    out = []
    for group, (title, _) in GROUPS.items():
        members = [f for f in fields.values() if GROUP_OF.get(f.name) == group and f.name not in online]
        out.append([title, members, []])
    if online:
        members = [fields[n] for n in ONLINE_TEACHER if n in online]
        out.append(["online teacher (--teacher-mode online; annotate's settings)", members, []])
    for entry in out:
        title, members, hidden = entry
        if full:
            continue
        if command in ("run", "active"):
            entry[1], entry[2] = [f for f in members if f.name in COMMON], [f for f in members if f.name not in COMMON]
        elif title.startswith("online teacher"):
            entry[1], entry[2] = (
                [f for f in members if f.name in ONLINE_SHOWN],
                [f for f in members if f.name not in ONLINE_SHOWN],
            )
    return [tuple(e) for e in out if e[1] or e[2]]


def build_parser(full: bool = False) -> argparse.ArgumentParser:
    """The parser of every subcommand. ``full``: every flag with its whole help (``--help-all``)."""
    parser = argparse.ArgumentParser(
        prog="distillery", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(STAGES) + "}")
    for name, (help_line, _) in STAGES.items():
        p = sub.add_parser(
            name,
            help=help_line,
            description=help_line,
            usage=f"distillery {name} [options]",
            formatter_class=_Formatter,
            add_help=False,
        )
        p.add_argument(
            "-h", "--help", action="help", help="the common flags" if name in ("run", "active") else "show this help"
        )
        p.add_argument("--help-all", action="store_true", help="every flag, with its whole help text")
        p.add_argument("--config", metavar="FILE", help="YAML settings (keys as the flags); flags win")
        for title, members, hidden in _help_groups(name, full):
            g = p.add_argument_group(title) if members else p
            for f in members:
                _add_flag(g, f, full, shown=True)
            for f in hidden:
                _add_flag(p, f, full, shown=False)
        for old, new in RENAMED.get(name, {}).items():
            p.add_argument(old, action=_Renamed, const=new, nargs="?", help=argparse.SUPPRESS)
    return parser


def resolve(args: argparse.Namespace) -> dict:
    """Defaults <- YAML file <- flags, checked against the subcommand's settings and converted to their types."""
    known = stage_fields(args.command)
    values: dict = {}
    if args.config:
        path = Path(args.config)
        values = read_config(path)
        # One file may serve every stage (data/configs/llm-neo-sst2.yaml): a key of another
        # stage is left to that stage; a key no stage knows is an error.
        every = {k for command in STAGES for k in stage_fields(command)}
        for key in sorted(set(values) - every):
            hint = f" (renamed: {RENAMED_KEYS[key]})" if key in RENAMED_KEYS else ""
            raise UserError(
                f"{path}: unknown key '{key}'{hint}; see 'distillery {args.command} --help-all' for the settings"
            )
        values = {k: coerce(known[k], v, str(path)) for k, v in values.items() if k in known}
    for k, v in vars(args).items():
        if k in known and v is not None:
            values[k] = coerce(known[k], v)
    return values


def build(cls, values: dict):
    """An instance of one stage's config from the resolved values that belong to it (``__post_init__``
    checks ranges and refuses NaN and infinity in every float field)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def check_together(command: str, configs: list) -> None:
    """Settings of two stages that cannot work together: an error, never silently ignored."""
    by_type = {type(c): c for c in configs}
    distill, annotate, active = by_type.get(DistillConfig), by_type.get(AnnotateConfig), by_type.get(ActiveConfig)
    if active is not None and active.warm_start and not student_kind(distill.student_kind).warm_start:
        raise UserError(
            f"warm_start: applies to a student kind that can start from the previous round's (e.g. encoder); "
            f"found --student-kind {distill.student_kind}; leave --warm-start out"
        )
    if (
        distill is not None
        and annotate is not None
        and distill.teacher_mode == "online"
        and not teacher_backends.get(annotate.backend).local
    ):
        raise UserError(
            "teacher_mode online: expected a backend that runs the model here (--backend local) (online "
            "distillation runs the teacher in this process); "
            f"found --backend {annotate.backend}; annotate with it first, then distill offline (--teacher-mode offline)"
        )


def headline(metrics: dict) -> str:
    """The table ``run`` and ``evaluate`` print ("–" where there is no gold label)."""
    from distillery.evaluation.report import with_ci

    t, s = metrics["teacher"], metrics["student"]
    rows = [
        ("teacher accuracy", with_ci(t["accuracy"], t.get("ci", {}).get("accuracy"))),
        ("student accuracy", with_ci(s["accuracy"], s.get("ci", {}).get("accuracy"))),
        ("majority baseline", with_ci(metrics["majority_accuracy"], None)),
        ("agreement", with_ci(metrics["agreement"], s.get("ci", {}).get("agreement"))),
        ("Cohen's κ", with_ci(metrics["kappa"], s.get("ci", {}).get("kappa"))),
        ("retention", with_ci(metrics["retention"], s.get("ci", {}).get("retention"))),
        ("macro-F1 retention", with_ci(metrics.get("macro_f1_retention"), None)),
        (
            "worst class F1 ret.",
            with_ci(metrics.get("worst_class_retention"), None)
            + (f" ({metrics['worst_class']})" if metrics.get("worst_class") else ""),
        ),
        ("student speed-up", f"{s['speedup']:.1f}×" if s.get("speedup") else "–"),
    ]
    review = (metrics.get("review") or {}).get("random") or {}
    first = next(iter(metrics.get("students") or {}), None)
    for name, key in (
        ("teacher", "teacher"),
        ("student", first),
    ):  # the person's labels on the random part of the review queue
        m = review.get(key)
        if isinstance(m, dict) and m.get("estimate") is not None:
            covered = f", {m['covered']:.0%} of test rows' strata" if m.get("covered", 1) < 1 else ""
            rows.append(
                (
                    f"{name} acc (review)",
                    f"{m['estimate']:.4f} [{m['low']:.4f}, {m['high']:.4f}] on {m['rows']} rows{covered}",
                )
            )
    lines = [f"  {k:<20} {v}" for k, v in rows]
    lines += [f"  WARNING: {w}" for w in metrics.get("warnings", [])]
    return "\n".join(lines)


@contextlib.contextmanager
def gpus_hidden(hide: bool):
    """``--device cpu`` means the CPU in every process: with a GPU visible, torch's barrier under
    accelerate picks ``cuda:<local rank>`` even for the gloo backend, and rank 1 of a CPU run
    crashed on a 1-GPU machine (issue #10). Nothing has touched CUDA yet when this runs; the
    variable is put back afterwards for in-process callers (tests)."""
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hide:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        yield
    finally:
        if hide and previous is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        elif hide:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous


def run_stages(command: str, configs: list) -> None:
    """Run one stage, or all three for ``run``, and print the headline."""
    from distillery.core.models import quiet_third_party

    quiet_third_party()
    from distillery.annotate import annotate
    from distillery.distill import distill
    from distillery.evaluation import evaluate
    from distillery.serve import export, predict, write_card

    if command == "annotate":
        annotate(configs[0])
    elif command == "distill":
        student = distill(configs[0], configs[1])
        if (
            os.environ.get("RANK", "0") == "0"
        ):  # under accelerate launch, rank 0 writes the card (another rank's copy would not be its own)
            write_card(student)
    elif command == "predict":
        predict(configs[0])
    elif command == "export":
        export(configs[0])
    elif command == "review":
        from distillery.review import review

        review(configs[0])
    elif command == "active":
        from distillery.active import active

        metrics = active(*configs)
        if metrics:
            print(
                f"\n{headline(metrics)}\n\nreport: {Path(configs[1].out) / 'report.md'} (learning curve: one "
                "student per round)"
            )
    else:
        if command == "run":
            from distillery.pipeline import run

            metrics = run(*configs)
        else:
            metrics = evaluate(configs[0])
        print(f"\n{headline(metrics)}\n\nreport: {Path(configs[-1].out) / 'report.md'}")


RESUME = {
    "distill": "rerun with --resume to go on from the last checkpoint (--checkpoint-every N saves them)",
    "evaluate": "rerun the same command",
    "export": "rerun the same command",
}


def _one_line(err: BaseException) -> str:
    """The first line of an error's message; an OSError with a file name reads 'what: 'file''."""
    if (
        isinstance(err, OSError) and err.filename is not None
    ):  # "[Errno 13] Permission denied: 'x'" -> "Permission denied: 'x'"
        what = err.strerror or (str(err.args[0]) if err.args else type(err).__name__)
        files = f"'{err.filename}'" + (f" -> '{err.filename2}'" if err.filename2 is not None else "")
        return f"{what.splitlines()[0]}: {files}"
    return str(err).splitlines()[0] if str(err).strip() else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user's mistake (``UserError``), a missing optional package (``ImportError``
    with its pip hint) or a file, permission or connection error (``OSError``) is one line and exit
    code 2; Ctrl-C is one line and 130; anything else is a bug in Distillery: its traceback and 1.
    ``DISTILLERY_DEBUG=1`` re-raises everything."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help-all" in argv:
        build_parser(full=True).parse_args([a for a in argv if a != "--help-all"] + ["--help"])
    args = build_parser().parse_args(argv)
    debug = os.environ.get("DISTILLERY_DEBUG", "") not in ("", "0")
    try:
        values = resolve(args)
        configs = [build(cls, values) for cls in stage_configs(args.command)]
        check_together(args.command, configs)
        started = time.perf_counter()
        with gpus_hidden(values.get("device") == "cpu"):
            run_stages(args.command, configs)
        print(f"{args.command}: finished in {time.perf_counter() - started:.0f} s")
    except KeyboardInterrupt:
        if debug:
            raise
        how = RESUME.get(args.command, "rerun the same command to resume: finished work is kept")
        print(f"\ndistillery {args.command}: interrupted; {how}", file=sys.stderr)
        return 130
    except (UserError, ImportError, OSError) as err:
        if debug:
            raise
        print(f"distillery {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception:
        if debug:
            raise
        traceback.print_exc()
        print(
            f"distillery {args.command}: this is a bug in Distillery, not a mistake in your input or "
            "settings; please report it "
            "with the traceback above (DISTILLERY_DEBUG=1 raises it for a debugger)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def reference_markdown() -> str:
    """docs/usage.md's settings reference, generated from the config dataclasses and the registries
    (tests/test_cli_help.py checks the file holds exactly this; docs/make_reference.py writes it)."""
    where: dict[str, list[str]] = {}
    fields: dict[str, dataclasses.Field] = {}
    for command in STAGES:
        for name, f in stage_fields(command).items():
            where.setdefault(name, []).append(command)
            fields.setdefault(name, f)
    lines = [
        "<!-- settings reference: generated by docs/make_reference.py from the config dataclasses; do not "
        "edit by hand -->",
        "",
    ]
    for title, names in GROUPS.values():
        lines += [
            f"### {title[0].upper()}{title[1:]}",
            "",
            "| flag (YAML key) | default | subcommands | what it does |",
            "|---|---|---|---|",
        ]
        for name in names.split():
            f = fields[name]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            shown = ",".join(default) if isinstance(default, list) else default
            text = f.metadata.get("help", "")
            if f.metadata.get("registry") is not None:
                text += " — " + f.metadata["registry"].describe()
            text = text.replace("|", "\\|")
            flag = f.metadata.get("flag") or f"--{name.replace('_', '-')}"
            lines.append(f"| `{flag}` (`{name}`) | `{shown}` | {', '.join(where[name])} | {text} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
