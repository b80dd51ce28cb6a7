"""The four extension points, used as docs/extending.md shows: a toy student kind, teacher backend,
calibration mode and active strategy registered through the public API, then chosen by name on
the command line and run end to end (active: annotate -> distill -> evaluate per round) on tiny
local models."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_rows
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

import distillery
from distillery import cli as distillery_cli
from distillery.core.options import option

ROOT = Path(__file__).resolve().parents[1]


class KeywordTeacher(distillery.Teacher):
    """A teacher backend that needs no model: label log-probs from counting cue words."""

    CUES = {"positive": ("love", "great", "wonderful"), "negative": ("hate", "terrible", "awful")}

    def __init__(self, settings, task, runtime):
        self.labels = task.labels
        self.calls = 0

    def score(self, texts):
        self.calls += 1
        out = []
        for text in texts:
            hits = np.array(
                [sum(text.lower().count(w) for w in self.CUES.get(lab, ())) for lab in self.labels], dtype=float
            )
            raw = np.log(np.exp(hits) / np.exp(hits).sum())
            out.append(distillery.Annotation(logprobs=raw.tolist(), mass=1.0))
        return out

    def prompt_lengths(self, texts):
        return [len(t) for t in texts]


class TinyBert(distillery.StudentKind):
    """A student kind of our own: a 1-layer BERT with random weights, the tokenizer from --student-model."""

    summary = "a one-layer BERT from a config (test)"
    default_lr = 1e-3
    card_text = "tiny BERT classifier"

    def build(self, cfg, labels):
        tokenizer = AutoTokenizer.from_pretrained(cfg.student_model)
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={lab: i for i, lab in enumerate(labels)},
        )
        torch.manual_seed(cfg.seed)
        return tokenizer, BertForSequenceClassification(config)


def least_confident(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 1.0 - probs.max(axis=1)


def half_mean(raw, content_free, gold_raw, gold):
    """Subtract half of each label's mean raw log-prob."""
    return distillery.Calibration("half-mean", 0.5 * raw.mean(axis=0))


@pytest.fixture
def toys():
    distillery.teacher_backends.register("keywords", distillery.TeacherBackend("cue words (test)", KeywordTeacher))
    distillery.student_kinds.register("tiny-bert", TinyBert)
    distillery.calibration_modes.register(
        "half-mean", distillery.CalibrationMode("half the mean correction (test)", half_mean)
    )
    distillery.active_strategies.register(
        "least-confident", distillery.Strategy("1 - the top probability (test)", least_confident)
    )
    yield
    distillery.teacher_backends.unregister("keywords")
    distillery.student_kinds.unregister("tiny-bert")
    distillery.calibration_modes.unregister("half-mean")
    distillery.active_strategies.unregister("least-confident")


def test_registered_entries_are_choices_on_the_command_line(toys, capsys):
    with pytest.raises(SystemExit):
        distillery_cli.main(["active", "--help-all"])
    text = capsys.readouterr().out
    for name in ("keywords", "tiny-bert", "half-mean", "least-confident"):
        assert name in text
    with pytest.raises(ValueError, match="already registered"):
        distillery.student_kinds.register("tiny-bert", TinyBert)


def test_a_toy_of_each_kind_runs_end_to_end(toys, tiny_roberta, tmp_path):
    pool = tmp_path / "pool.csv"
    make_rows(60).to_csv(pool, index=False)
    out = tmp_path / "run"
    code = distillery_cli.main(
        [
            "active",
            "--data",
            str(pool),
            "--text-column",
            "review",
            "--label-column",
            "sentiment",
            "--labels",
            "negative,positive",
            "--backend",
            "keywords",
            "--calibrate",
            "half-mean",
            "--strategy",
            "least-confident",
            "--student-kind",
            "tiny-bert",
            "--student-model",
            str(tiny_roberta),
            "--device",
            "cpu",
            "--epochs",
            "1",
            "--min-steps",
            "4",
            "--batch-size",
            "8",
            "--speed-rows",
            "0",
            "--budget",
            "40",
            "--test-rows",
            "10",
            "--seed-rows",
            "10",
            "--round-rows",
            "10",
            "--patience",
            "0",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    manifest = json.loads((out / "annotations" / "manifest.json").read_text())
    assert manifest["calibration"]["mode"] == "half-mean"
    frame = pd.concat(pd.read_csv(p) for p in sorted((out / "annotations").glob("part-*.csv")))
    raw = (
        frame[["raw_logprob_negative", "raw_logprob_positive"]].to_numpy() if "raw_logprob_negative" in frame else None
    )
    assert len(frame) == 40 and frame["teacher_label"].isin(["negative", "positive"]).all()
    if raw is not None:  # the calibration applied is ours: half the mean, subtracted
        bias = np.array([manifest["calibration"]["bias"][lab] for lab in ("negative", "positive")])
        np.testing.assert_allclose(bias, 0.5 * raw.mean(axis=0), atol=1e-6)
    rounds = [json.loads(line) for line in (out / "active" / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) >= 2 and [r["strategy"] for r in rounds[:2]] == ["random", "least-confident"]
    student = distillery.load_student(rounds[-1]["student"])
    assert student.kind == "tiny-bert" and type(student.model).__name__ == "BertForSequenceClassification"
    assert set(student.predict(["I love it", "I hate it"])) <= {"negative", "positive"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["agreement"] <= 1.0


# A plugin as a user gets one: a package of its own, installed with pip, that declares a
# `distillery.plugins` entry point. Its backend has two settings of its own.
PLUGIN = '''
"""distillery-cues: a teacher backend that counts cue words (a Distillery plugin)."""

from dataclasses import dataclass

import numpy as np

import distillery
from distillery.core.options import check_settings, option


@dataclass
class CueSettings:
    cue_weight: float = option(1.0, "log-odds one cue word adds to its label", gt=0.0, short="log-odds per cue word")
    positive_cues: list[str] = option(["love", "great"], "words that count for positive", short="cues for positive")

    def __post_init__(self):
        check_settings(self)


class CueTeacher(distillery.Teacher):
    def __init__(self, settings, task, runtime):
        self.labels, self.settings = task.labels, settings

    def score(self, texts):
        out = []
        for text in texts:
            hits = [sum(text.lower().count(w) for w in self.settings.positive_cues) if lab == "positive" else 0
                    for lab in self.labels]
            raw = np.asarray(hits, dtype=float) * self.settings.cue_weight
            out.append(distillery.Annotation(logprobs=(raw - np.logaddexp.reduce(raw)).tolist(), mass=1.0))
        return out

    def prompt_lengths(self, texts):
        return [len(t) for t in texts]


def register():
    distillery.teacher_backends.register(
        "cues", distillery.TeacherBackend("cue words (plugin)", CueTeacher, settings=CueSettings)
    )
'''


def _wheel(folder: Path, name: str, files: dict[str, str], entry_points: str) -> Path:
    """A pure-Python wheel of ``files``, laid out by hand (the format is zip + metadata: no build tool needed)."""
    dist = name.replace("-", "_")
    info = f"{dist}-0.1.dist-info"
    files = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: distillery-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": entry_points,
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    wheel = folder / f"{dist}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def _install(wheel: Path, site: Path) -> None:
    """``pip install`` the wheel into ``site`` (no dependencies, no index: nothing is downloaded)."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)]
    done = subprocess.run(pip, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """distillery-cues, installed by pip (its wheel; no network) into a folder of its own."""
    build, site = tmp_path_factory.mktemp("distillery-cues"), tmp_path_factory.mktemp("site")
    wheel = _wheel(
        build,
        "distillery-cues",
        {"distillery_cues.py": PLUGIN},
        "[distillery.plugins]\ncues = distillery_cues:register\n",
    )
    _install(wheel, site)
    assert (site / "distillery_cues.py").is_file() and list(site.glob("distillery_cues-0.1.dist-info"))
    return site


def _distillery(*args: str, site: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, "-m", "distillery", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_an_installed_plugin_adds_a_backend_with_its_settings_to_the_command(plugin_site, tmp_path):
    shown = _distillery("annotate", "--help", site=plugin_site)
    assert shown.returncode == 0, shown.stderr
    assert "cues teacher backend (--backend cues):" in shown.stdout
    assert "--cue-weight X" in shown.stdout and "--positive-cues A,B" in shown.stdout

    data = tmp_path / "rows.csv"
    pd.DataFrame({"text": ["I love it", "I hate it", "great great", "meh"] * 5}).to_csv(data, index=False)
    config = tmp_path / "cues.yaml"
    config.write_text(
        f"data: {data}\nout: {tmp_path / 'run'}\nbackend: cues\ncalibrate: none\ntest_fraction: 0\n"
        "cue_weight: 3.0\npositive_cues: [love, great]\n"
    )
    done = _distillery("annotate", "--config", str(config), site=plugin_site)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "run" / "annotations" / "manifest.json").read_text())
    assert manifest["config"]["backend"] == "cues" and manifest["config"]["cue_weight"] == 3.0
    chunk = pd.read_csv(tmp_path / "run" / "annotations" / "part-00000.csv", keep_default_na=False)
    labels = dict(zip(chunk["text"], chunk["teacher_label"]))
    assert labels["great great"] == labels["I love it"] == "positive" and labels["I hate it"] == "negative"
    assert np.isclose(np.exp(chunk.loc[chunk["text"] == "I love it", "logprob_positive"].iloc[0]), 1 / (1 + np.exp(-3)))

    # Its settings that change the answers are the run's fingerprint: a rerun with another weight is refused.
    again = _distillery("annotate", "--config", str(config), "--cue-weight", "4", site=plugin_site)
    assert again.returncode == 2 and "--restart-annotations" in again.stderr, again.stderr
    assert _distillery("annotate", "--config", str(config), site=plugin_site).returncode == 0  # the same: resumes

    wrong = _distillery("annotate", "--backend", "local", "--cue-weight", "2", site=plugin_site)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1
    assert "--cue-weight: a setting of the cues teacher backend; found --backend local" in wrong.stderr

    reference = _distillery_reference(plugin_site)
    assert (
        "### Cues teacher backend (--backend cues)" in reference
        and "| `--cue-weight` (`cue_weight`) | `1.0` |" in reference
    )

    without = _distillery("annotate", "--backend", "cues", "--out", str(tmp_path / "other"))
    assert without.returncode == 2 and "expected one of local, openai" in without.stderr and "cues" in without.stderr


def _distillery_reference(site: Path) -> str:
    """docs/make_reference.py's table, generated in a process that has the plugin installed."""
    code = f"import runpy; print(runpy.run_path({str(ROOT / 'docs' / 'make_reference.py')!r})['reference_markdown']())"
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_plugin_that_fails_to_load_is_one_line_naming_it(tmp_path):
    site = tmp_path / "site"
    wheel = _wheel(
        tmp_path,
        "distillery-broken",
        {"distillery_broken.py": "raise RuntimeError('needs a newer distillery')\n"},
        "[distillery.plugins]\nbroken = distillery_broken:register\n",
    )
    _install(wheel, site)
    done = _distillery("annotate", "--backend", "local", "--out", str(tmp_path / "run"), site=site)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert (
        "plugin 'broken' (package distillery-broken) failed to load: RuntimeError: needs a newer distillery"
        in done.stderr
    )


def test_a_saved_student_of_a_kind_no_plugin_registers_is_one_line_naming_the_package(tmp_path, capsys):
    student = tmp_path / "student"
    student.mkdir()
    (student / "config.json").write_text("{}")
    record = {"student": "tiny-gpt", "labels": ["negative", "positive"], "plugin": "distillery-tiny-gpt"}
    (student / "distillery_student.json").write_text(json.dumps(record))
    rows = tmp_path / "rows.csv"
    pd.DataFrame({"text": ["fine"]}).to_csv(rows, index=False)
    argv = ["predict", "--student", str(student), "--data", str(rows), "--predictions", str(tmp_path / "p.csv")]
    assert distillery_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "a student of kind 'tiny-gpt', which no installed plugin registers" in err
    assert "install the package distillery-tiny-gpt" in err


def test_a_plugin_setting_named_like_one_of_distillerys_is_refused_in_one_line(tmp_path, capsys):
    """It would take over that flag (here --limit) for every backend. In-process: a backend registered by a
    script is checked like an installed plugin's."""

    @dataclass
    class ClashSettings:
        limit: int = option(5, "rows", ge=0)

    distillery.teacher_backends.register(
        "clash", distillery.TeacherBackend("clash", KeywordTeacher, settings=ClashSettings)
    )
    try:
        code = distillery_cli.main(["annotate", "--limit", "40", "--out", str(tmp_path / "run")])
    finally:
        distillery.teacher_backends.unregister("clash")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "teacher backend 'clash': its setting 'limit' has the name of a Distillery setting (--limit)" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_backend_whose_teacher_is_no_teacher_is_one_line(tmp_path, capsys):
    """A teacher without prompt_lengths(), or not derived from distillery.Teacher: one line naming the
    backend, before any row is asked."""

    class NoLengths(distillery.Teacher):
        def __init__(self, settings, task, runtime):
            pass

        def score(self, texts):
            return [distillery.Annotation(logprobs=[-0.7, -0.7], mass=1.0) for _ in texts]

    class NotATeacher:
        def __init__(self, settings, task, runtime):
            pass

        def score(self, texts):
            return []

        def prompt_lengths(self, texts):
            return [1] * len(texts)

    data = tmp_path / "rows.csv"
    pd.DataFrame({"text": ["I love it", "meh"] * 4}).to_csv(data, index=False)
    for teacher, says in [
        (NoLengths, "its teacher has no prompt_lengths()"),
        (NotATeacher, "its teacher is a NotATeacher, not a Teacher"),
    ]:
        distillery.teacher_backends.register("odd", distillery.TeacherBackend("odd", teacher), replace=True)
        try:
            argv = ["annotate", "--data", str(data), "--backend", "odd", "--calibrate", "none"]
            code = distillery_cli.main([*argv, "--out", str(tmp_path / teacher.__name__)])
        finally:
            distillery.teacher_backends.unregister("odd")
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"teacher backend 'odd': {says}" in err and "derives from distillery.Teacher" in err, err


@pytest.mark.parametrize(
    "fault, code, says",
    [
        ("raise RuntimeError('cue table missing')", 1, "the error comes from the plugin package distillery-faulty"),
        # an installed package's teacher without prompt_lengths(): named with its package (the in-process
        # test above checks the same refusal for a backend a script registered)
        ("return", 2, "teacher backend 'faulty' (package distillery-faulty): its teacher has no prompt_lengths()"),
    ],
)
def test_a_faulty_plugin_backend_is_named_not_taken_for_a_distillery_bug(fault, code, says, tmp_path):
    source = PLUGIN.replace('"cues"', '"faulty"')
    if fault.startswith("raise"):  # its own code raises while scoring
        source = source.replace(
            "        out = []\n        for text in texts:",
            f"        {fault}\n        out = []\n        for text in texts:",
        )
    else:  # a teacher without prompt_lengths()
        source = source.replace("    def prompt_lengths(self, texts):\n        return [len(t) for t in texts]\n", "")
    wheel = _wheel(
        tmp_path,
        "distillery-faulty",
        {"distillery_faulty.py": source},
        "[distillery.plugins]\nfaulty = distillery_faulty:register\n",
    )
    _install(wheel, tmp_path / "site")
    data = tmp_path / "rows.csv"
    pd.DataFrame({"text": ["I love it", "meh"] * 4}).to_csv(data, index=False)
    args = [
        "annotate",
        "--data",
        str(data),
        "--backend",
        "faulty",
        "--calibrate",
        "none",
        "--out",
        str(tmp_path / "run"),
    ]
    done = _distillery(*args, site=tmp_path / "site")
    assert done.returncode == code and says in done.stderr, done.stderr
    assert "a bug in Distillery" not in done.stderr


def test_the_documented_offline_plugin_install_works_in_a_fresh_venv(tmp_path):
    """docs/extending.md's plugin package (its pyproject.toml, as the page shows it), built from source by
    ``pip install --no-build-isolation --no-index`` in a new venv whose only packages are the machine's
    (setuptools >= 70.1 among them, as the page says): nothing is downloaded, and the command lists it."""
    page = (ROOT / "docs" / "extending.md").read_text()
    pyproject = page.split("```toml\n", 1)[1].split("```", 1)[0]
    source = tmp_path / "distillery-cues"
    source.mkdir()
    (source / "pyproject.toml").write_text(pyproject.split("\n", 1)[1])  # less its "# pyproject.toml of" line
    (source / "distillery_cues.py").write_text(PLUGIN)
    venv = tmp_path / "venv"
    # no pip or setuptools of the venv's own (ensurepip's setuptools is older than 70.1): the machine's are used
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(source)]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    shown = subprocess.run(
        [python, "-m", "distillery", "annotate", "--help"], capture_output=True, text=True, timeout=300, env=env
    )
    assert shown.returncode == 0, shown.stderr
    assert "cues teacher backend (--backend cues):" in shown.stdout and "--cue-weight X" in shown.stdout
    # the machine's own environment does not have it: it went into the venv
    assert "--backend cues" not in _distillery("annotate", "--help").stdout
