"""Render ``report.md`` from a dataclass and ``report_template.md``; draw confusion matrices."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from distillery.core.rundir import replacing
from distillery.student import shareable_name

__all__ = ["ReportData", "render_report", "plot_confusion", "markdown_table", "headline"]

TEMPLATE = Path(__file__).with_name("report_template.md")


@dataclass
class ReportData:
    """Everything the report shows. ``models`` maps a display name to its metrics dict."""

    task: str
    teacher: str
    split: str
    n_rows: int
    n_failed: int
    labels: list[str]
    majority_label: str | None  # None when the rows have no gold labels
    majority_accuracy: float | None
    models: dict[str, dict]  # "teacher" first, then the students
    speed_rows: int
    device: str
    plots: list[str]
    config: str
    warnings: list[str] = field(default_factory=list)
    learning_curve: list[dict] = field(default_factory=list)  # {train_rows, steps, accuracy, agreement}
    defer: dict | None = None  # the first student's {target, picked, curve} (distillery/student/defer.py)
    review: dict | None = None  # the human labels of 'distillery review' (evaluation/review.py)
    ceiling: dict | None = None  # the gold-trained student of 'distill --ceiling' (evaluation/evaluate.py)


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def with_ci(value: float | None, ci: list[float] | None) -> str:
    """``0.7424 [0.6900, 0.7900]``: a value and its 95% bootstrap interval."""
    if value is None:
        return "–"
    return f"{value:.4f}" if not ci else f"{value:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def _params(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.1f}M params"


def shareable_config(text: str) -> str:
    """The resolved config as the report shows it: every local path (``out``, ``annotations``,
    ``students``, a teacher's model dir) by its file or folder name, so a report can be shared
    without the machine's directories; ``evaluate_config.yaml`` keeps the full paths."""
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if not isinstance(config, dict):
        return text

    def share(value):
        if isinstance(value, list):
            return [share(v) for v in value]
        return shareable_name(value) if isinstance(value, str) else value

    return yaml.safe_dump({k: share(v) for k, v in config.items()}, sort_keys=False)


def render_report(data: ReportData) -> str:
    """The report as Markdown text (local paths shown by their names, see :func:`shareable_config`)."""
    teacher = data.models["teacher"]
    students = {k: v for k, v in data.models.items() if k != "teacher"}
    t_ci = teacher.get("ci", {}).get("accuracy")
    headline = markdown_table(
        [
            "student",
            "teacher acc",
            "student acc",
            "agreement",
            "κ",
            "retention",
            "macro-F1 ret.",
            "worst class F1 ret.",
            "speed-up",
        ],
        [
            [
                name,
                with_ci(teacher["accuracy"], t_ci),
                *[with_ci(m[k], m.get("ci", {}).get(k)) for k in ("accuracy", "agreement", "kappa", "retention")],
                with_ci(m.get("macro_f1_retention"), None),
                with_ci(m.get("worst_class_retention"), None)
                + (f" ({m['worst_class']})" if m.get("worst_class") else ""),
                None if m.get("speedup") is None else f"{m['speedup']:.1f}×",
            ]
            for name, m in students.items()
        ],
    )
    warnings = (
        "\n".join(f"- **Warning** – {w}" for w in data.warnings)
        or "No warnings: teacher and student are clearly above the majority baseline and agree."
    )
    curve = "Not computed (`distillery distill --learning-curve` trains students on 25% and 50% of the rows)."
    if data.learning_curve:
        curve = markdown_table(
            ["training rows", "optimizer steps", "student accuracy", "agreement with teacher"],
            [[p["train_rows"], p["steps"], p["accuracy"], p["agreement"]] for p in data.learning_curve],
        )
    defer = "Not computed."
    if data.defer:
        picked, target = data.defer["picked"], data.defer["target"]
        if picked:
            defer = (
                f"At confidence ≥ **{picked['threshold']:.4f}** the student answers "
                f"**{picked['coverage']:.1%}** of the rows "
                f"with agreement {picked['agreement']:.4f}; its one-sided 95% lower bound "
                f"{picked['lower_bound']:.4f} meets the "
                f"target {target:g}, so {picked['coverage']:.1%} of teacher calls are saved. `distillery "
                "predict --defer` "
                "marks the other rows for the teacher."
            )
        elif target:
            defer = (
                f"No threshold reaches agreement {target:g} with 95% confidence on these rows: defer "
                "every row, or lower the target."
            )
        defer += "\n\n" + markdown_table(
            ["threshold", "answered", "agreement", "accuracy (gold)"],
            [[p["threshold"], p["coverage"], p["agreement"], p["accuracy"]] for p in data.defer["curve"][::4]],
        )
        defer += "\n\n![coverage](coverage.png)"
    quality = markdown_table(
        ["model", "accuracy", "majority baseline", "macro-F1", "ECE"],
        [[name, m["accuracy"], data.majority_accuracy, m["macro_f1"], m["ece"]] for name, m in data.models.items()],
    )
    per_class = markdown_table(
        ["model", *data.labels],
        [[name, *[m["per_class"][lab]["f1"] for lab in data.labels]] for name, m in data.models.items()],
    )
    speed = markdown_table(
        ["model", "rows/s", "batch", "parameters", "size on disk (MB)", "evaluated as"],
        [
            [
                name,
                m.get("rows_per_s"),
                m.get("batch_size"),
                m.get("parameters"),
                None if m.get("size_bytes") is None else m["size_bytes"] / 1e6,
                m.get("evaluated_base"),
            ]
            for name, m in data.models.items()
        ],
    )
    if data.majority_label is None:
        baseline = "No gold labels: accuracy, F1 and ECE are unavailable; agreement and κ compare student and teacher."
    else:
        baseline = (
            f"Majority-class baseline (always `{data.majority_label}`): accuracy **{_fmt(data.majority_accuracy)}**."
        )
    plots = "\n".join(f"![{Path(p).stem}]({p})" for p in data.plots)
    review = review_section(data.review)
    ceiling = ""
    if data.ceiling:
        first = next(m for name, m in data.models.items() if name != "teacher")
        ratio = first.get("macro_f1_vs_ceiling")
        ceiling = (
            f"\nGold-trained ceiling (`distill --ceiling`: the same student trained on these rows' gold labels, "
            f"`{data.ceiling['student']}`): accuracy {_fmt(data.ceiling['accuracy'])}, macro-F1 "
            f"{_fmt(data.ceiling['macro_f1'])}"
            + (f"; the student reaches **{ratio:.2f}×** of its macro-F1." if ratio is not None else ".")
            + "\n"
        )
    return TEMPLATE.read_text().format(
        ceiling=ceiling,
        task=data.task,
        teacher=shareable_name(data.teacher),
        teacher_params=_params(teacher.get("parameters")),
        n_rows=data.n_rows,
        split=data.split,
        n_failed=data.n_failed,
        baseline=baseline,
        headline=headline,
        review=review,
        warnings=warnings,
        curve=curve,
        defer=defer,
        quality=quality,
        per_class=per_class,
        speed_rows=data.speed_rows,
        device=data.device,
        speed=speed,
        plots=plots,
        config=shareable_config(data.config).rstrip(),
    )


def review_section(review: dict | None) -> str:
    """The report's "Human review" section: estimates from the random part, errors found by the doubtful part."""
    if not review:
        return (
            "No human labels yet: `distillery review --out OUT` writes a queue of 200 rows to label "
            '(docs/usage.md, "Get gold labels").'
        )
    lines = [
        f"{review['reviewed_rows']} rows reviewed by a person; the review found "
        f"**{review['teacher_errors_found']}** teacher errors."
        + (
            f" {review['other_rows']} of them were labelled outside a review queue: they count for "
            "calibration and training, "
            "not for the estimates below."
            if review.get("other_rows")
            else ""
        )
    ]
    random, doubtful = review["random"], review["doubtful"]
    if random:
        lines += [
            "",
            f"**Random part** ({review['random_rows']} evaluation rows drawn at random, stratified by the "
            "teacher's label): "
            "accuracy against the person, post-stratified, with 95% intervals.",
            "",
            markdown_table(
                ["model", "accuracy (95% interval)", "rows", "test rows covered"],
                [
                    [name, f"{m['estimate']:.4f} [{m['low']:.4f}, {m['high']:.4f}]", m["rows"], f"{m['covered']:.0%}"]
                    for name, m in random.items()
                    if isinstance(m, dict)
                ],
            ),
        ]
        if next(m for m in random.values() if isinstance(m, dict))["covered"] < 1:
            lines += [
                "",
                "Some of the teacher's labels have no reviewed random row: the estimate speaks for the test "
                "rows it covers only.",
            ]
    if doubtful:
        lines += [
            "",
            f"**Doubtful part** ({review['doubtful_rows']} training rows picked as likely teacher errors): "
            f"{doubtful['teacher_errors_found']} were errors ({doubtful['errors_per_row']:.1%} of the rows"
            + (f"; random rows: {random['errors_per_row']:.1%}" if random else "")
            + "). Accuracy against the person there "
            "(a student distilled after the import trained on these rows with the person's labels: in-sample for it):",
            "",
            markdown_table(
                ["model", "accuracy", "rows"],
                [[name, m["accuracy"], m["rows"]] for name, m in doubtful.items() if isinstance(m, dict)],
            ),
        ]
    return "\n".join(lines)


def plot_reliability(models: dict, path: Path) -> None:
    """Save the reliability diagram of every model (confidence against accuracy per bin; the diagonal is calibrated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for name, m in models.items():
        points = m.get("reliability") or []
        ax.plot(
            [p["confidence"] for p in points],
            [p["accuracy"] for p in points],
            marker="o",
            label=f"{name} (ECE {m['ece']:.3f})",
        )
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("reliability")
    fig.tight_layout()
    with replacing(path, binary=True) as fh:  # whole, and recorded as Distillery's only then
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


def plot_confusion(
    matrix: list[list[int]], labels: list[str], title: str, ylabel: str, xlabel: str, path: Path
) -> None:
    """Save one confusion matrix as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.2 * len(labels) + 1.5))
    ax.imshow(m, cmap="Blues")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    with replacing(path, binary=True) as fh:  # whole, and recorded as Distillery's only then
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


def headline(metrics: dict) -> str:
    """The table ``run`` and ``evaluate`` print ("–" where there is no gold label)."""
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
    ceiling = metrics.get("ceiling")
    if ceiling:  # distill --ceiling: the same student on the gold labels
        rows.append(
            (
                "gold-trained ceiling",
                f"macro-F1 {ceiling['macro_f1']:.4f}"
                + (
                    f"; the student reaches {s['macro_f1_vs_ceiling']:.2f}× of it"
                    if s.get("macro_f1_vs_ceiling")
                    else ""
                ),
            )
        )
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
