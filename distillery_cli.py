"""The ``distillery`` command: annotate, distill, evaluate, or run all three; then predict and export.

    distillery run                                   # the embedded demo (tweets, SmolLM2 -> MiniLM)
    distillery run --data reviews.csv --label-column label --labels negative,positive --out data/runs/reviews
    distillery annotate --config my.yaml --limit 500
    distillery distill --out data/runs/reviews --alpha 0.8
    distillery evaluate --out data/runs/reviews
    distillery predict --student data/runs/reviews/student --data new.csv --out preds.csv --defer
    distillery export --student data/runs/reviews/student          # ONNX, int8 weights
    distillery active --data pool.csv --budget 2000 --strategy margin --out data/runs/active

Every subcommand takes ``--config FILE.yaml`` (flat keys, the same names as the flags with
underscores); flags win over the file, unknown keys are errors. The resolved config is written
next to each stage's output.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path

import yaml

from active.config import ActiveConfig
from annotate.config import AnnotateConfig
from distill.config import DistillConfig
from evaluation.config import EvaluateConfig
from serve.config import ExportConfig, PredictConfig
from annotate.errors import UserError

STAGES = {
    "annotate": (AnnotateConfig,),
    "distill": (DistillConfig, AnnotateConfig),  # annotate's data/teacher settings serve --teacher-mode online
    "evaluate": (EvaluateConfig,),
    "run": (AnnotateConfig, DistillConfig, EvaluateConfig),
    "predict": (PredictConfig,),
    "export": (ExportConfig,),
    "active": (ActiveConfig, AnnotateConfig, DistillConfig, EvaluateConfig),
}
HELP = {
    "annotate": "ask the teacher for labels and label log-probs; write OUT/annotations/part-*.csv",
    "distill": "train a student on OUT/annotations with the hybrid KD loss; save OUT/student",
    "evaluate": "compare students, teacher and gold; write OUT/report.md and OUT/metrics.json",
    "run": "annotate, distill and evaluate in one go (no arguments: the embedded demo)",
    "predict": "label new rows with a saved student (encoder, LoRA, merged or ONNX); write id, text, label, probabilities",
    "export": "export a saved student to ONNX (int8 weights by default) for onnxruntime",
    "active": "annotate only the rows the student is unsure of: seed, train, score the pool, ask the teacher, repeat within --budget",
}


def _fields(classes) -> dict[str, dataclasses.Field]:
    """The union of the config fields; a name shared by two stages means the same thing."""
    out: dict[str, dataclasses.Field] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            out.setdefault(f.name, f)
    return out


def _add_flag(parser: argparse.ArgumentParser, f: dataclasses.Field) -> None:
    flag = "--" + f.name.replace("_", "-")
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    shown = "see above" if default is None or default == -1 else default if default != [] else "none"
    help_text = f"{f.metadata.get('help', '')} (default: {shown})".replace("%", "%%")  # argparse formats help with %
    kind = str(f.type)
    if kind in ("bool", "bool | None"):
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    elif kind.startswith("list"):
        parser.add_argument(flag, type=lambda s: [x.strip() for x in s.split(",") if x.strip()], default=None, metavar="A,B", help=help_text)
    else:
        convert = {"int": int, "float": float}.get(kind, str)
        parser.add_argument(flag, type=convert, default=None, choices=f.metadata.get("choices"), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distillery", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(STAGES) + "}")
    for name, classes in STAGES.items():
        p = sub.add_parser(name, help=HELP[name], description=HELP[name])
        p.add_argument("--config", metavar="FILE.yaml", help="YAML file of settings; flags override it")
        for f in _fields(classes).values():
            _add_flag(p, f)
    return parser


def resolve(args: argparse.Namespace) -> dict:
    """Defaults <- YAML file <- flags, checked against the stages' fields."""
    known = _fields(STAGES[args.command])
    values: dict = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: '{path}'")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise UserError(f"{path}: expected a mapping of setting: value; found {type(values).__name__}")
        values = {k.replace("-", "_"): v for k, v in values.items()}
        # One file may serve every stage (data/configs/llm-neo-sst2.yaml): a key of another
        # stage is left to that stage; a key no stage knows is an error.
        unknown = sorted(set(values) - set(_fields(cls for classes in STAGES.values() for cls in classes)))
        if unknown:
            raise UserError(f"{path}: unknown keys {unknown}; see 'distillery {args.command} --help' for the settings")
        values = {k: v for k, v in values.items() if k in known}
    values.update({k: v for k, v in vars(args).items() if k in known and v is not None})
    return values


def build(cls, values: dict):
    """An instance of one stage's config from the resolved values that belong to it."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def headline(metrics: dict) -> str:
    """The table ``run`` and ``evaluate`` print ("–" where there is no gold label)."""
    from evaluation.report import with_ci

    t, s = metrics["teacher"], metrics["student"]
    rows = [
        ("teacher accuracy", with_ci(t["accuracy"], t.get("ci", {}).get("accuracy"))),
        ("student accuracy", with_ci(s["accuracy"], s.get("ci", {}).get("accuracy"))),
        ("majority baseline", with_ci(metrics["majority_accuracy"], None)),
        ("agreement", with_ci(metrics["agreement"], s.get("ci", {}).get("agreement"))),
        ("Cohen's κ", with_ci(metrics["kappa"], s.get("ci", {}).get("kappa"))),
        ("retention", with_ci(metrics["retention"], s.get("ci", {}).get("retention"))),
        ("student speed-up", f"{s['speedup']:.1f}×" if s.get("speedup") else "–"),
    ]
    lines = [f"  {k:<18} {v}" for k, v in rows]
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
    from annotate.models import quiet_third_party

    quiet_third_party()
    from annotate import annotate
    from distill import distill
    from evaluation import evaluate
    from serve import export, predict, write_card

    if command == "annotate":
        annotate(configs[0])
    elif command == "distill":
        write_card(distill(configs[0], configs[1]))
    elif command == "predict":
        predict(configs[0])
    elif command == "export":
        write_card(export(configs[0]))
    elif command == "active":
        from active import active

        metrics = active(*configs)
        if metrics:
            print(f"\n{headline(metrics)}\n\nreport: {Path(configs[1].out) / 'report.md'} (learning curve: one student per round)")
    else:
        if command == "run":
            annotate(configs[0])
            distill(configs[1], configs[0])
        metrics = evaluate(configs[-1])
        print(f"\n{headline(metrics)}\n\nreport: {Path(configs[-1].out) / 'report.md'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        values = resolve(args)
        configs = [build(cls, values) for cls in STAGES[args.command]]
        started = time.perf_counter()
        with gpus_hidden(values.get("device") == "cpu"):
            run_stages(args.command, configs)
        print(f"{args.command}: finished in {time.perf_counter() - started:.0f} s")
    except (ValueError, FileNotFoundError, ImportError, OSError) as err:
        if os.environ.get("DISTILLERY_DEBUG"):
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"distillery {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
