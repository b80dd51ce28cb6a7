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
--out is the run folder and --student the student folder (default OUT/student) everywhere;
--overwrite only lets a stage write beside files it did not write (--restart-annotations and
--restart-predictions start over). Installed plugins (distillery.plugins entry points) add their
backends, student kinds, calibration modes and strategies, with their settings.

Exit codes: 0 done; 2 a mistake in the input, a setting or a file (one line says what to fix);
130 interrupted (rerun to resume); 1 a bug in Distillery (its traceback is printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path

from distillery.active.config import ActiveConfig
from distillery.annotate.config import AnnotateConfig
from distillery.annotate.teacher import online_backend
from distillery.core.errors import UserError, full_disk
from distillery.core.flags import Formatter, Renamed, add_flag, build, split_shown
from distillery.core.options import coerce, read_config, settings_of, type_name
from distillery.core.registry import load_plugins, plugin_in_traceback
from distillery.core.run import Run
from distillery.distill.config import DistillConfig
from distillery.evaluation.config import EvaluateConfig
from distillery.review.config import ReviewConfig
from distillery.serve.config import ExportConfig, PredictConfig
from distillery.student import student_kind

# The settings of annotate that distill reads for --teacher-mode online (the rows and the teacher, each
# declared ``online`` in its option(); the settings of a backend that can serve online distillation come
# with them).
ONLINE_TEACHER = (*(f.name for f in dataclasses.fields(AnnotateConfig) if f.metadata.get("online")), "settings")

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

# The --help groups, in order: a setting names its group in its option(); a backend's or a student
# kind's own settings form a group of their own after these.
GROUP_TITLES = {
    "input": "input rows",
    "task": "task",
    "teacher": "teacher",
    "calibration": "teacher calibration",
    "student": "student",
    "training": "training",
    "active": "active loop",
    "review": "review queue",
    "evaluation": "evaluation",
    "output": "output",
    "device": "device and cluster (--engine ray: docs/scale.md)",
}
# A setting's option() says where --help lists it (``shown``): "rare" ones only under --help-all; run and
# active --help list the "common" ones (the rest: --help-all); every other subcommand shows all the others.

# Old spellings: an error naming the new one (a flag here is not also a setting of that subcommand).
RENAMED = {
    "distill": {"--output-dir": "--student (the student folder)"},
    "run": {"--output-dir": "--student (the student folder)"},
    "active": {"--output-dir": "--student (the student folder)"},
    "predict": {
        "--batch-size": "--predict-batch-size",
        "--overwrite": "--restart-predictions (predict again from the start)",
    },
    "export": {"--output-dir": "--onnx-dir"},
}
RENAMED_KEYS = {"output_dir": "student (distill's student folder) or onnx_dir (export's ONNX folder)"}


def entry_groups(command: str) -> list[tuple[str, object, str, list[dataclasses.Field]]]:
    """The registry entries whose own settings a subcommand reads: ``(title, registry, entry name, fields)``
    per teacher backend (only those that can serve online distillation for ``distill``) or student kind
    that declares settings."""
    out = []
    for entry in STAGES[command][1]:
        cls, names = entry if isinstance(entry, tuple) else (entry, None)
        for f in dataclasses.fields(cls):
            registry = f.metadata.get("entry_settings")
            if registry is None or (names is not None and f.name not in names):
                continue
            for name in registry.names():
                if names is not None and not getattr(registry.get(name), "online", False):
                    continue
                fields = list(dataclasses.fields(settings_of(registry, name)))
                if fields:
                    out.append((f"{name} {registry.axis} ({registry.flag} {name})", registry, name, fields))
    return out


def check_entry_settings() -> None:
    """A backend's or student kind's own setting must not take the name of a stage's setting (it would take
    over that flag), and two entries that declare one name must give it one type: else one line naming it."""
    own = {f.name for command in STAGES for cls in stage_configs(command) for f in dataclasses.fields(cls)}
    types: dict[str, tuple[str, str]] = {}
    for command in STAGES:
        for _, registry, name, fields in entry_groups(command):
            where = f"{registry.axis} '{name}'" + (
                f" (package {registry.origin(name)})" if registry.origin(name) else ""
            )
            for f in fields:
                if f.name in own:
                    raise UserError(
                        f"{where}: its setting '{f.name}' has the name of a Distillery setting "
                        f"(--{f.name.replace('_', '-')}), whose flag it would take; it must be renamed in the plugin"
                    )
                first = types.setdefault(f.name, (type_name(f), where))
                if first[0] != type_name(f):
                    raise UserError(
                        f"{where}: its setting '{f.name}' is a {type_name(f)}, but {first[1]} declares it a "
                        f"{first[0]}; one name has one meaning: it must be renamed in one of them"
                    )


def stage_fields(command: str) -> dict[str, dataclasses.Field]:
    """The settings a subcommand reads, by name (a name two stages share means the same thing), the
    registered backends' and student kinds' own settings included."""
    out: dict[str, dataclasses.Field] = {}
    for entry in STAGES[command][1]:
        cls, names = entry if isinstance(entry, tuple) else (entry, None)
        for f in dataclasses.fields(cls):
            if (names is None or f.name in names) and "entry_settings" not in f.metadata:
                out.setdefault(f.name, f)
    for _, _, _, fields in entry_groups(command):
        for f in fields:
            out.setdefault(f.name, f)
    return out


def stage_configs(command: str) -> list[type]:
    """The config classes a subcommand builds, in the order ``run_stages`` takes them."""
    return [entry[0] if isinstance(entry, tuple) else entry for entry in STAGES[command][1]]


def _help_groups(command: str, full: bool) -> list[tuple[str, list, list]]:
    """``(title, shown fields, hidden fields)`` per help group of a subcommand: the groups the options
    name, then one per backend or student kind with settings of its own. distill puts the online
    teacher's settings in a group of their own; run and active hide the rarely used flags."""
    fields = stage_fields(command)
    entries = entry_groups(command)
    theirs = {f.name for *_, members in entries for f in members}
    online = {
        n
        for n in ONLINE_TEACHER
        if command == "distill" and n not in {f.name for f in dataclasses.fields(DistillConfig)}
    }
    out = []
    for group, title in GROUP_TITLES.items():
        members = [f for f in fields.values() if f.metadata.get("group") == group and f.name not in online | theirs]
        out.append([title, members, []])
    if online:
        members = [fields[n] for n in ONLINE_TEACHER if n in online and n in fields]
        out.append(["online teacher (--teacher-mode online; annotate's settings)", members, []])
    seen: set[str] = set()
    for title, _, _, members in entries:  # a name two entries declare is listed once, under the first
        out.append([title, [f for f in members if f.name not in seen], []])
        seen |= {f.name for f in members}
    for entry in out:
        title, members, _ = entry
        if full:
            continue
        if command in ("run", "active"):
            entry[1:] = split_shown(members, lambda f: f.metadata.get("shown") == "common")
        elif any(f.metadata.get("shown") == "rare" for f in members):
            entry[1:] = split_shown(members, lambda f: f.metadata.get("shown") != "rare")
        elif command == "distill" and (
            title.startswith("online teacher") or title.endswith(")") and "backend" in title
        ):
            entry[1:] = split_shown(members, lambda f: f.metadata.get("online") == "shown")
            if not title.startswith("online teacher") and online:  # --teacher: listed with the online group
                next(e for e in out if e[0].startswith("online teacher"))[1] += entry[1]
                entry[1] = []
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
            formatter_class=Formatter,
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
                add_flag(g, f, full, shown=True)
            for f in hidden:
                add_flag(p, f, full, shown=False)
        for old, new in RENAMED.get(name, {}).items():
            p.add_argument(old, action=Renamed, const=new, nargs="?", help=argparse.SUPPRESS)
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


def check_together(command: str, configs: list) -> None:
    """Settings of two stages that cannot work together: an error, never silently ignored."""
    by_type = {type(c): c for c in configs}
    distill, annotate, active = by_type.get(DistillConfig), by_type.get(AnnotateConfig), by_type.get(ActiveConfig)
    if active is not None and active.warm_start and not student_kind(distill.student_kind).warm_start:
        raise UserError(
            f"warm_start: applies to a student kind that can start from the previous round's (e.g. encoder); "
            f"found --student-kind {distill.student_kind}; leave --warm-start out"
        )
    if distill is not None and annotate is not None and distill.teacher_mode == "online":
        online_backend(annotate.backend)  # before any work: a backend that cannot serve it is one line


def run_stages(command: str, configs: list) -> None:
    """Run one stage, or all three for ``run``, and print the headline."""
    from distillery.core.models import quiet_third_party

    quiet_third_party()
    from distillery.annotate import annotate
    from distillery.distill import distill
    from distillery.evaluation import evaluate
    from distillery.evaluation.report import headline
    from distillery.serve import export, predict

    if command == "annotate":
        annotate(configs[0])
    elif command == "distill":
        distill(configs[0], configs[1])  # saves the student with its model card
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
                f"\n{headline(metrics)}\n\nreport: {Run.of(configs[1]).report} (learning curve: one student per round)"
            )
    else:
        if command == "run":
            from distillery.pipeline import run

            metrics = run(*configs)
        else:
            metrics = evaluate(configs[0])
        print(f"\n{headline(metrics)}\n\nreport: {Run.of(configs[-1]).report}")


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
    try:
        load_plugins()  # the registries' entries: built-in and installed plugins (the flags depend on them)
        check_entry_settings()
    except UserError as err:
        print(f"distillery: error: {_one_line(err)}", file=sys.stderr)
        return 2
    if "--help-all" in argv:
        build_parser(full=True).parse_args([a for a in argv if a != "--help-all"] + ["--help"])
    args = build_parser().parse_args(argv)
    debug = os.environ.get("DISTILLERY_DEBUG", "") not in ("", "0")
    try:
        values = resolve(args)
        configs = [build(cls, values) for cls in stage_configs(args.command)]
        check_together(args.command, configs)
        started = time.perf_counter()
        from distillery.core.models import gpus_hidden  # torch loads only once a command runs

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
    except Exception as err:
        if debug:
            raise
        if full_disk(err):  # the machine's, not a bug, whichever library noticed it (safetensors, pyarrow, ...)
            how = RESUME.get(args.command, "rerun the same command to resume: finished work is kept")
            print(
                f"distillery {args.command}: error: the disk is full ({_one_line(err)}); free space, then {how}",
                file=sys.stderr,
            )
            return 2
        traceback.print_exc()
        plugin = plugin_in_traceback(sys.exc_info()[2])
        if plugin:  # the plugin's own code raised: its authors can fix it, not Distillery's
            print(
                f"distillery {args.command}: the error comes from the plugin package {plugin}, not from Distillery "
                f"or your settings; report it to its authors with the traceback above (or pip uninstall {plugin})",
                file=sys.stderr,
            )
            return 1
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
