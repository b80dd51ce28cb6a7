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
underscores); flags win over the file, unknown keys and values of the wrong type are errors.
The resolved config is written next to each stage's output.

Exit codes: 0 done; 2 a mistake in the input, a setting or a file (one line says what to fix);
130 interrupted (rerun to resume); 1 a bug in Distillery (its traceback is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path


from distillery.active.config import ActiveConfig
from distillery.annotate.config import AnnotateConfig
from distillery.core.options import coerce, read_config
from distillery.distill.config import DistillConfig
from distillery.evaluation.config import EvaluateConfig
from distillery.serve.config import ExportConfig, PredictConfig
from distillery.core.errors import UserError

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
    """Defaults <- YAML file <- flags, checked against the stages' fields and converted to their types."""
    known = _fields(STAGES[args.command])
    values: dict = {}
    if args.config:
        path = Path(args.config)
        values = read_config(path)
        # One file may serve every stage (data/configs/llm-neo-sst2.yaml): a key of another
        # stage is left to that stage; a key no stage knows is an error.
        unknown = sorted(set(values) - set(_fields(cls for classes in STAGES.values() for cls in classes)))
        if unknown:
            raise UserError(f"{path}: unknown keys {unknown}; see 'distillery {args.command} --help' for the settings")
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
    from distillery.core.models import quiet_third_party

    quiet_third_party()
    from distillery.annotate import annotate
    from distillery.distill import distill
    from distillery.evaluation import evaluate
    from distillery.serve import export, predict, write_card

    if command == "annotate":
        annotate(configs[0])
    elif command == "distill":
        write_card(distill(configs[0], configs[1]))
    elif command == "predict":
        predict(configs[0])
    elif command == "export":
        write_card(export(configs[0]))
    elif command == "active":
        from distillery.active import active

        metrics = active(*configs)
        if metrics:
            print(f"\n{headline(metrics)}\n\nreport: {Path(configs[1].out) / 'report.md'} (learning curve: one student per round)")
    else:
        with contextlib.ExitStack() as held:
            if command == "run":  # OUT stays locked across the three stages
                from distillery.core.rundir import check_folder, locked
                from distillery.evaluation.evaluate import check_report_writable

                held.enter_context(locked(configs[0].out, "run"))
                # A folder or report file that is not distillery's stops the run before any teacher call.
                check_folder(Path(configs[1].output_dir or f"{configs[1].out}/student"), configs[1].overwrite, "--output-dir")
                check_report_writable(configs[-1])
                annotate(configs[0])
                distill(configs[1], configs[0])
            metrics = evaluate(configs[-1])
        print(f"\n{headline(metrics)}\n\nreport: {Path(configs[-1].out) / 'report.md'}")


RESUME = {"distill": "rerun with --resume to go on from the last checkpoint (--checkpoint-every N saves them)",
          "evaluate": "rerun the same command", "export": "rerun the same command"}


def _one_line(err: BaseException) -> str:
    """The first line of an error's message; an OSError with a file name reads 'what: 'file''."""
    if isinstance(err, OSError) and err.filename is not None:  # "[Errno 13] Permission denied: 'x'" -> "Permission denied: 'x'"
        what = err.strerror or (str(err.args[0]) if err.args else type(err).__name__)
        files = f"'{err.filename}'" + (f" -> '{err.filename2}'" if err.filename2 is not None else "")
        return f"{what.splitlines()[0]}: {files}"
    return str(err).splitlines()[0] if str(err).strip() else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user's mistake (``UserError``), a missing optional package (``ImportError``
    with its pip hint) or a file, permission or connection error (``OSError``) is one line and exit
    code 2; Ctrl-C is one line and 130; anything else is a bug in Distillery: its traceback and 1.
    ``DISTILLERY_DEBUG=1`` re-raises everything."""
    args = build_parser().parse_args(argv)
    debug = os.environ.get("DISTILLERY_DEBUG", "") not in ("", "0")
    try:
        values = resolve(args)
        configs = [build(cls, values) for cls in STAGES[args.command]]
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
        print(f"distillery {args.command}: this is a bug in Distillery, not a mistake in your input or settings; please report it "
              "with the traceback above (DISTILLERY_DEBUG=1 raises it for a debugger)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
