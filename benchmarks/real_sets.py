"""User-like sets built from the shared gold-labelled data, annotated once by the embedded teacher.

    python benchmarks/real_sets.py [--sets long,tweets2,tweets3,sst2] [--data-dir ../shared/data]

A user's data is rarely the balanced demo: these sets are what calibration_shift.py,
small_data.py and data_size.py measure on. Each is annotated with ``--calibrate none`` (the
raw label log-probs stay in the chunks; every calibration is then computed from them without
asking the teacher again) into ``data/runs/bench-real-NAME``:

- ``sst2``: a seeded 5,000-row sample of sst2_train.csv (split=train) + the 872 validation rows;
- ``tweets2``: binary tweets (negative/positive), 1,500 train rows + 1,000 test rows, both
  sampled from the shipped files at their natural label shares;
- ``tweets3``: 3-way tweets as shipped, 600 train + 1,000 test rows (label-stratified);
- ``long``: long imbalanced "reviews": 5 SST-2 training sentences of one label joined into one
  text (~450 characters), 75% positive, 600 train + 400 test rows, none of their sentences in
  the ``sst2`` pool.
- ``sst2-1k``, ``tweets2-1k``, ``tweets3-1k``, ``long-1k`` (50/50), ``agnews-1k``: smaller pools for the
  battery of benchmarks/every_class.py (1,000 / 1,100 / 1,200 / 700 / 1,200 train rows);
- ``tweets2-2k``, ``tweets3-2k``, ``agnews-2k``: the same kinds of rows in pools big enough for
  2,000 training rows at skewed shares (class_balance.py): 4,000 / 2,400 / 4,800 train rows;
  agnews-2k keeps all 1,600 test rows.

Imbalanced variants (SST-2 80/20 and 20/80, tweets 75/25) are resampled from these rows by
the scripts that use them (:func:`resample`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import ROOT, SHARED_DATA

from distillery.annotate import AnnotateConfig, annotate, read_annotations
from distillery.annotate.calibration import calibrate_chunks, resolve_mode
from distillery.annotate.chunks import ChunkStore

RUNS = ROOT / "data" / "runs"
TASKS = {
    "sst2": "sentiment-binary",
    "tweets2": "sentiment-binary",
    "tweets3": "sentiment-3way",
    "long": "sentiment-binary",
    "agnews": "topic",
    "tweets2-2k": "sentiment-binary",
    "tweets3-2k": "sentiment-3way",
    "agnews-2k": "topic",
    "sst2-1k": "sentiment-binary",
    "tweets2-1k": "sentiment-binary",
    "tweets3-1k": "sentiment-3way",
    "long-1k": "sentiment-binary",
    "agnews-1k": "topic",
}
LABELS = {
    "agnews": ["world", "sports", "business", "sci/tech"],
    "agnews-2k": ["world", "sports", "business", "sci/tech"],
    "agnews-1k": ["world", "sports", "business", "sci/tech"],
}  # the topic task takes its labels from here (--labels)


def run_dir(name: str) -> Path:
    return RUNS / f"bench-real-{name}"


def _read(data_dir: Path, file: str) -> pd.DataFrame:
    frame = pd.read_csv(data_dir / file, keep_default_na=False)
    return frame[frame["text"].str.strip() != ""]


def _stratified(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return pd.concat(g.sample(frac=n / len(frame), random_state=seed) for _, g in frame.groupby("label"))


def _joined(
    sentences: pd.DataFrame, n: int, positive_share: float, per_text: int, rng: np.random.Generator
) -> pd.DataFrame:
    """``n`` long texts, each ``per_text`` sentences of one label; ``positive_share`` of them positive."""
    rows = []
    n_pos = int(round(n * positive_share))
    for label, count in (("positive", n_pos), ("negative", n - n_pos)):
        pool = sentences[sentences["label"] == label]["text"].to_numpy()
        picks = rng.choice(len(pool), size=(count, per_text), replace=False)
        rows += [{"text": " ".join(pool[i].strip() for i in row), "label": label} for row in picks]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=int(rng.integers(1 << 31)))


# set -> (train rows, test rows; None = every row of the test file); the -2k pools are big enough
# for 2,000 training rows at skewed shares (issue #17)
SIZES = {
    "tweets2": (1500, 1000),
    "tweets2-2k": (4000, 1000),
    "tweets3": (600, 1000),
    "tweets3-2k": (2400, 1000),
    "agnews": (1200, 400),
    "agnews-2k": (4800, None),
    "tweets2-1k": (1100, 700),
    "tweets3-1k": (1200, 800),
    "agnews-1k": (1200, 800),
}


def build(name: str, data_dir: Path, seed: int = 0) -> pd.DataFrame:
    """The rows of one set: columns text, label, split."""
    kind = name.split("-")[0]
    if kind == "sst2":
        train = _read(data_dir, "sst2_train.csv").sample(n=5000 if name == "sst2" else 1000, random_state=seed)
        test = _read(data_dir, "sst2_validation.csv")
    elif kind == "tweets2":
        n_train, n_test = SIZES[name]
        train = (
            _read(data_dir, "tweet_sentiment_train.csv")
            .query("label != 'neutral'")
            .sample(n=n_train, random_state=seed)
        )
        test = (
            _read(data_dir, "tweet_sentiment_test.csv").query("label != 'neutral'").sample(n=n_test, random_state=seed)
        )
    elif kind in ("tweets3", "agnews"):  # label-stratified; AG's News: 300 (1,200 in agnews-2k) train rows per label
        n_train, n_test = SIZES[name]
        file = "tweet_sentiment" if kind == "tweets3" else "agnews"
        train = _stratified(_read(data_dir, f"{file}_train.csv"), n_train, seed)
        test = _read(data_dir, f"{file}_test.csv")
        test = _stratified(test, n_test, seed) if n_test else test
    elif kind == "long":
        sst = _read(data_dir, "sst2_train.csv")
        pool_ids = set(sst.sample(n=5000, random_state=seed).index)  # the sst2 set's rows stay out
        sentences = sst[~sst.index.isin(pool_ids) & (sst["text"].str.len() >= 60)]
        rng = np.random.default_rng(seed)
        if name == "long":
            both = _joined(sentences, 1000, 0.75, 5, rng)
            train, test = both.iloc[:600], both.iloc[600:]
        else:  # long-1k: 50/50, 350 + 350 train rows and 200 + 200 test rows, resampled to skewed shares
            both = _joined(sentences, 1100, 0.5, 5, rng)
            train = both.groupby("label").head(350)
            test = both.drop(train.index)
    else:
        raise ValueError(f"unknown set '{name}'; expected one of {sorted(TASKS)}")
    return pd.concat([train.assign(split="train"), test.assign(split="test")], ignore_index=True)[
        ["text", "label", "split"]
    ]


def annotate_set(name: str, data_dir: Path = SHARED_DATA, seed: int = 0) -> Path:
    """Annotate one set (resumable; a finished run is reused) and return its annotations dir."""
    out = run_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "input.csv"
    if not path.is_file():
        build(name, data_dir, seed).to_csv(path, index=False)
    return annotate(
        AnnotateConfig(
            data=str(path),
            split_column="split",
            limit=0,
            balance=False,
            task=TASKS[name],
            labels=LABELS.get(name, []),
            calibrate="none",
            out=str(out),
            seed=seed,
            device="cpu",
        )
    )


def load(name: str) -> pd.DataFrame:
    """The annotated rows of a set (failed rows dropped) with a ``labels`` attribute."""
    frame, manifest = read_annotations(run_dir(name) / "annotations")
    frame = frame[frame["error_type"] == ""].reset_index(drop=True)
    frame.attrs["labels"] = manifest["labels"]
    return frame


def resample(frame: pd.DataFrame, shares: dict[str, float], n: int, seed: int) -> pd.DataFrame:
    """``n`` rows of ``frame`` whose gold labels have the given shares (without replacement)."""
    parts = []
    for label, share in shares.items():
        rows = frame[frame["gold"] == label]
        k = int(round(n * share))
        if k > len(rows):
            raise ValueError(f"resample: {k} '{label}' rows asked for, {len(rows)} available")
        parts.append(rows.sample(n=k, random_state=seed))
    out = pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    out.attrs["labels"] = frame.attrs.get("labels")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="long,tweets2,tweets3,sst2")
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    args = parser.parse_args()
    for name in args.sets.split(","):
        if not (args.data_dir / "sst2_train.csv").is_file():
            raise SystemExit(f"skipping: the shared data is not in {args.data_dir} (pass --data-dir)")
        started = time.perf_counter()
        annotate_set(name, args.data_dir)
        frame = load(name)
        print(
            f"{name}: {len(frame)} rows, mean {frame['text'].str.len().mean():.0f} characters, "
            f"gold {frame['gold'].value_counts().to_dict()}, {time.perf_counter() - started:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()


# name -> (set, positive share of train and test rows or None = as annotated, train rows, test rows)
SCENARIOS = {
    "sst2 50/50": ("sst2", 0.5, 500, 0),
    "sst2 80/20": ("sst2", 0.8, 500, 555),
    "sst2 20/80": ("sst2", 0.2, 500, 535),
    "tweets2 50/50": ("tweets2", 0.5, 500, 946),
    "tweets2 75/25": ("tweets2", 0.75, 500, 700),
    "tweets3 as shipped": ("tweets3", None, 600, 1000),
    "long 75/25": ("long", None, 600, 400),
    "agnews balanced": ("agnews", None, 500, 400),
    "agnews 55/25/15/5": ("agnews", (0.55, 0.25, 0.15, 0.05), 500, 180),
}


def scenario(name: str, seed: int = 0, n_train: int | None = None, table: dict | None = None) -> pd.DataFrame:
    """The annotated rows of a scenario of ``table`` (default :data:`SCENARIOS`): train rows then
    test rows, resampled to its label shares; ``n_train`` overrides its number of training rows.

    ``sst2 50/50`` keeps all 872 validation rows (444/428) as test rows.
    """
    set_name, share, default_train, n_test = (table or SCENARIOS)[name]
    n_train = n_train or default_train
    frame = load(set_name)
    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    if share is None:
        if n_train > len(train) and n_train != default_train:
            raise ValueError(
                f"scenario '{name}': {n_train} training rows asked for, {len(train)} in the '{set_name}' pool"
            )
        train = train.sample(n=min(n_train, len(train)), random_state=seed)
        test = test.sample(n=n_test, random_state=seed) if n_test and n_test < len(test) else test
    else:
        labels = frame.attrs["labels"]
        if isinstance(share, dict):  # label -> share
            shares = share
        else:
            shares = (
                dict(zip(labels, share)) if isinstance(share, tuple) else {"positive": share, "negative": 1 - share}
            )
        train = resample(train, shares, n_train, seed)
        test = resample(test, shares, n_test, seed) if n_test else test
    out = pd.concat([train, test], ignore_index=True)
    out.attrs["labels"] = frame.attrs["labels"]
    return out


def content_free_bias(set_name: str) -> list[float]:
    """The teacher's mean raw log-probs on the task's content-free inputs (scored once, then cached)."""
    path = run_dir(set_name) / "content_free_bias.json"
    if not path.is_file():
        from distillery.annotate.backends import build_teacher
        from distillery.annotate.teacher import content_free_bias as score_content_free
        from distillery.core.tasks import load_task

        task = load_task(TASKS[set_name], LABELS.get(set_name))
        teacher = build_teacher(
            AnnotateConfig(task=TASKS[set_name], labels=LABELS.get(set_name, []), device="cpu"), task
        )
        path.write_text(json.dumps(score_content_free(teacher, task.content_free)))
    return json.loads(path.read_text())


def materialize(rows: pd.DataFrame, set_name: str, out: Path, calibrate: str, calibrate_on: int = 200) -> Path:
    """Write ``rows`` as a finished annotation run in ``out/annotations``, calibrated by the real
    code path (ChunkStore.finalize) with ``calibrate``; no teacher is asked. Returns ``out``."""
    _, manifest = read_annotations(run_dir(set_name) / "annotations")
    root = out / "annotations"
    shutil.rmtree(root, ignore_errors=True)
    keep = ("config", "task", "labels", "teacher", "prompt_hash")
    store = ChunkStore(root, {**manifest["fingerprint"], "scenario": str(out)}, {k: manifest[k] for k in keep})
    for index, start in enumerate(range(0, len(rows), 200)):
        store.write(index, rows.iloc[start : start + 200].reset_index(drop=True))
    labels = manifest["labels"]
    n_gold = int((rows["gold"].isin(labels) & (rows["split"] != "test")).sum())
    mode = resolve_mode(calibrate, n_gold, len(labels))
    calibrate_chunks(store, labels, mode, content_free_bias(set_name), calibrate_on, requested=calibrate)
    return out
