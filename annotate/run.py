"""The annotate stage: load rows -> ask the teacher -> write CSV chunks -> calibrate.

Run it with::

    distillery annotate --data reviews.csv --labels negative,positive --out data/runs/reviews
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from tqdm.auto import tqdm

from distillery.annotate.backends import Teacher, batch_limits, build_teacher, row_char_limit, score_rows
from distillery.annotate.calibration import calibrate_chunks, resolve_mode
from distillery.annotate.chunks import ChunkStore
from distillery.annotate.config import AnnotateConfig
from distillery.annotate.deferred import merge_answers
from distillery.annotate.request_cache import CACHE_FILES
from distillery.annotate.teacher import Annotation, content_free_bias, failed_for_good
from distillery.core.annotations import ManifestError, label_columns
from distillery.core.errors import UserError
from distillery.core.fingerprints import file_fingerprint, rows_fingerprint
from distillery.core.inputs import load_rows
from distillery.core.lock import locked
from distillery.core.options import default_of
from distillery.core.registry import calibration_modes
from distillery.core.reviewed import reviewed_fingerprint, reviewed_labels
from distillery.core.run import Run
from distillery.core.rundir import claim_folder, guard_files, remove_leftovers, write_text
from distillery.core.secrets import redacted
from distillery.core.tasks import load_task

__all__ = ["annotate"]

LOW_LABEL_MASS = 0.05  # a median label mass under this: the label words are not what the teacher says


def annotate(cfg: AnnotateConfig, grows: bool = False) -> Path:
    """Annotate the configured rows into ``OUT/annotations``; resumes a killed run. Returns that dir.

    One process at a time writes ``OUT`` (a second one stops with the first one's pid). A rerun
    on an input that changed stops; with ``grows`` (the active loop's selection file) rows may
    be added at the end, never edited or removed.
    """
    # Before anything is written: a hosted teacher's key variable; with --engine ray, Ray itself, the address
    # and room for the workers. Each is one line.
    if hasattr(cfg.settings, "api_key_env"):  # a hosted teacher: its server and key
        from distillery.annotate.hosted import checked_key

        checked_key(cfg.settings)
    if cfg.engine == "ray":
        from distillery.annotate.cluster import preflight

        preflight(cfg)
    with locked(cfg.out, "annotate"):
        return _annotate(cfg, grows)


def _annotate(cfg: AnnotateConfig, grows: bool) -> Path:
    """The stage in its steps: open the chunk store, plan the rows still to do, ask the teacher,
    calibrate and report (and, with --only-deferred, merge the answers into the predictions)."""
    task = load_task(cfg.task, cfg.labels or None)
    rows = load_rows(cfg, task.labels)
    entry = None if cfg.calibrate == "auto" else calibration_modes.get(cfg.calibrate)
    reviewed = reviewed_labels(cfg.out, rows["id"])  # human labels from 'distillery review' (OUT/review/gold.csv)
    if entry is not None and entry.needs_review and len(reviewed) < len(task.labels):
        raise UserError(
            f"--calibrate {cfg.calibrate}: expected human labels from 'distillery review' on at least "
            f"{len(task.labels)} of "
            f"these rows; found {len(reviewed)}; run 'distillery review --out {cfg.out}', label the queue "
            "and import it "
            "(--import FILE), or use --calibrate auto"
        )
    needs_gold = entry is not None and entry.needs_gold and not entry.needs_review
    if needs_gold and not ((rows["gold"].isin(task.labels)) & (rows["split"] != "test")).any():
        raise UserError(
            f"--calibrate {cfg.calibrate}: expected rows with gold labels outside the test split; found "
            "none; pass --label-column, "
            "or use --calibrate mean"
        )
    store = open_store(cfg, task, rows, grows)
    todo = plan(store, rows, cfg.chunk_size, cfg.retry_failed)
    n_todo = sum(len(redo) for *_, redo in todo)
    print(f"annotate: {len(rows)} rows, {len(rows) - n_todo} already done, {n_todo} to annotate -> {store.root}")
    if cfg.dry_run:
        dry_run(cfg, task, todo)
        return store.root
    n_gold = int((rows["gold"].isin(task.labels) & (rows["split"] != "test")).sum())
    balanced = bool(cfg.balance and n_gold)  # load_rows balanced the sample by gold label
    mode = resolve_mode(
        cfg.calibrate, n_gold, len(task.labels), balanced, len(reviewed)
    )  # auto: by what the data offers
    needs_content_free = calibration_modes.get(mode).needs_content_free and "content_free_bias" not in store.manifest
    with open_teacher(cfg, task, n_todo or needs_content_free) as teacher:  # loaded only when there is work to do
        started = time.perf_counter()
        if not ask_teacher(cfg, task, store, teacher, todo):
            return store.root  # stopped at --max-cost
        elapsed = time.perf_counter() - started
        if needs_content_free:  # after the rows: a teacher that fails (bad model name, key) fails on them first
            store.manifest["content_free_bias"] = content_free_bias(teacher, task.content_free)
            store.save_manifest()
    finish(cfg, task, store, mode, teacher, n_todo, elapsed, reviewed)
    failed, calibration = store.manifest["rows_failed"], store.manifest["calibration"]
    why = (
        f"auto: {len(reviewed)} reviewed rows"
        if mode == "reviewed"
        else "auto: label-balanced sample"
        if balanced
        else "auto"
    )
    chosen = calibration["mode"] + (f" ({why})" if cfg.calibrate == "auto" else "")
    prior = ", ".join(f"{k} {v:.2f}" for k, v in calibration.get("prior", {}).items())
    print(
        f"annotate: done, {len(rows) - failed} rows labelled, {failed} failed (error_type in the chunks: a "
        "rerun retries those that may "
        f"pass, --retry-failed also those that failed for good); calibration {chosen}"
        + (f", estimated label prior {prior}" if prior else "")
    )
    mass = store.manifest.get("label_mass_median")
    if mass is not None and mass < LOW_LABEL_MASS:
        print(
            f"annotate: warning: the teacher puts a median {mass:.1%} of its next-token probability on the "
            "label words: they are "
            "not what it tends to say, so its log-probs carry little; try label words closer to its own "
            "(verbalizers: in the task "
            "file), an answer prefix, or a stronger --teacher"
        )
    if cfg.only_deferred:
        write_merged(cfg, store.root)
    return store.root


@contextlib.contextmanager
def open_teacher(cfg: AnnotateConfig, task, needed: bool):
    """The teacher, or None when there is nothing to ask: in this process (``--engine local``), or its
    workers on a Ray cluster (``--engine ray``), shut down however the run ends."""
    if not needed:
        yield None
    elif cfg.engine == "ray":
        from distillery.annotate.cluster import ClusterTeacher

        with ClusterTeacher(cfg, task) as teacher:
            yield teacher
    else:
        yield build_teacher(cfg, task)


def answer_settings(cfg: AnnotateConfig) -> dict:
    """The backend and those of its settings that change the teacher's answers (all but the ones its
    settings class lists in ``SAME_ANSWERS``), where they differ from the local backend's defaults."""
    settings = cfg.settings
    same = getattr(type(settings), "SAME_ANSWERS", ())
    unset = type(settings)()
    changed = {
        f.name: getattr(settings, f.name)
        for f in dataclasses.fields(settings)
        if f.name not in same and getattr(settings, f.name) != getattr(unset, f.name)
    }
    if cfg.backend == "local" and not changed:
        return {}
    return {"name": cfg.backend, **changed}


def selecting_settings(cfg: AnnotateConfig) -> dict:
    """The settings that select the rows and their split (declared ``rows`` in their option()): what an
    annotation run's fingerprint records of its input."""
    out = {}
    for f in dataclasses.fields(cfg):
        when = f.metadata.get("rows")
        value = getattr(cfg, f.name)
        if when == "always" or (when == "when set" and value != default_of(f)):
            out[f.name] = value
    return out


def open_store(cfg: AnnotateConfig, task, rows: pd.DataFrame, grows: bool) -> ChunkStore:
    """The run's chunk store, claimed and checked against the rows this call selected."""
    root = Run.of(cfg).annotations
    fingerprint = {
        "teacher": cfg.teacher,
        "prompt_hash": task.prompt_hash(),
        "labels": task.labels,
        "data": selecting_settings(cfg),
        "chunk_size": cfg.chunk_size,
    }
    answers = answer_settings(cfg)
    if answers:  # only when not the defaults of the local backend, so runs from before this still resume
        fingerprint["backend"] = redacted(answers)  # never a secret in the manifest
    claim_folder(root, cfg.overwrite)  # --overwrite writes beside files of someone else's, never over them
    remove_leftovers(root)  # a killed run's half-written chunk or manifest (we hold the lock: no one writes them)
    guard_files(root, ["manifest.json", "config.yaml", *CACHE_FILES, *(p.name for p in root.glob("part-*.csv"))])
    selected = rows_fingerprint(rows, ["id", "text", "gold", "split"])
    extra = {
        "config": redacted(cfg.flat()),
        "task": asdict(task),
        "labels": task.labels,
        "teacher": cfg.teacher,
        "prompt_hash": task.prompt_hash(),
        "input": file_fingerprint(cfg.data) if Path(cfg.data).is_file() else {"name": cfg.data},
    }
    store = ChunkStore(root, fingerprint, extra, restart=cfg.restart_annotations)
    check_same_rows(store, selected, -(-len(rows) // cfg.chunk_size), grows)
    store.manifest["selected_rows"] = selected
    write_text(root / "config.yaml", yaml.safe_dump(redacted(cfg.flat()), sort_keys=False))
    return store


def plan(store: ChunkStore, rows: pd.DataFrame, chunk_size: int, retry_failed: bool = False) -> list[tuple]:
    """``(chunk index, chunk rows, finished frame or None, row index to ask)`` for every chunk with work left.

    Failed rows are asked again, except those that failed for good (too long, refused by the
    server: :func:`failed_for_good`) unless ``retry_failed``.
    """
    todo = []
    for index, start in enumerate(range(0, len(rows), chunk_size)):
        chunk = rows.iloc[start : start + chunk_size].reset_index(drop=True)
        done = store.existing(index, chunk)
        if done is None:
            redo = chunk.index
        else:
            failed = done["error_type"] != ""
            if not retry_failed:
                failed &= ~done["error_type"].map(failed_for_good)
            redo = done.index[failed]
        if len(redo):
            todo.append((index, chunk, done, redo))
    return todo


def dry_run(cfg: AnnotateConfig, task, todo: list[tuple]) -> None:
    """Print the requests, tokens and cost the planned rows would take; ask nothing."""
    n_todo = sum(len(redo) for *_, redo in todo)
    texts = [t for _, chunk, _, redo in todo for t in chunk.loc[redo, "text"]]
    tokens = sum(len(json.dumps(task.messages(t))) for t in texts) / 4  # ~4 characters a token for English text
    prices = cfg.settings  # a backend that charges declares its prices among its settings
    cost = tokens / 1e6 * getattr(prices, "price_prompt_per_m", 0.0) + n_todo / 1e6 * getattr(
        prices, "price_completion_per_m", 0.0
    )
    print(
        f"annotate: dry run: {n_todo} requests, ~{tokens:,.0f} prompt tokens (chars/4), ~{n_todo} completion "
        f"tokens, ~{cost:.4f} at the configured prices"
    )


def ask_teacher(cfg: AnnotateConfig, task, store: ChunkStore, teacher: Teacher | None, todo: list[tuple]) -> bool:
    """Score the planned rows chunk by chunk, each chunk written whole; False when --max-cost stopped it.
    With --engine ray the chunks are scored on the cluster's workers (annotate/cluster.py) and written
    here, by this process only."""
    if not todo:
        return True
    n_todo = sum(len(redo) for *_, redo in todo)
    # rows labelled by earlier runs show that the teacher answers (hosted: a wrong URL fails every row)
    teacher.answered += sum(c["rows"] - c["errors"] for c in store.manifest["chunks"].values())
    with tqdm(
        total=n_todo, unit="row", desc="annotate", smoothing=0.1, mininterval=0.5 if sys.stderr.isatty() else 30
    ) as bar:
        if cfg.engine == "ray":
            scored = teacher.score_chunks([(index, chunk.loc[redo, "text"].tolist()) for index, chunk, _, redo in todo])
        else:
            limits, max_chars = batch_limits(cfg), row_char_limit(cfg)
            scored = (
                (index, score_rows(teacher, chunk.loc[redo, "text"].tolist(), limits, max_chars, bar.update))
                for index, chunk, _, redo in todo
            )
        by_index = {index: (chunk, done, redo) for index, chunk, done, redo in todo}
        for index, results in scored:
            chunk, done, redo = by_index[index]
            frame = chunk_frame(chunk, task.labels, cfg.teacher, task.prompt_hash()) if done is None else done
            fill(frame, redo, results, task.labels)
            store.write(index, frame)
            if cfg.engine == "ray":
                bar.update(len(redo))
            spent, cap = teacher.spent(), getattr(cfg.settings, "max_cost", 0.0)
            if cap and spent >= cap:
                print(
                    f"annotate: stopped at --max-cost {cap} (spent {spent:.4f}); finished chunks "
                    "are kept, rerun to go on"
                )
                return False
    return True


def finish(
    cfg: AnnotateConfig,
    task,
    store: ChunkStore,
    mode: str,
    teacher,
    n_todo: int,
    elapsed: float,
    reviewed: dict[str, str] | None = None,
) -> None:
    """Calibrate every chunk (unless a rerun changed nothing: same mode, same human labels) and record
    speed and spend."""
    previous = store.manifest.get("calibration", {})
    same = (
        previous.get("mode") == mode
        and previous.get("requested", mode) == cfg.calibrate
        and previous.get("calibrate_on", cfg.calibrate_on) == cfg.calibrate_on
        and previous.get("reviewed") == (reviewed_fingerprint(reviewed) if mode == "reviewed" else None)
    )
    if (
        n_todo or store.manifest.get("status") != "complete" or not same
    ):  # a rerun with nothing to do leaves the chunks untouched
        calibrate_chunks(
            store,
            task.labels,
            mode,
            store.manifest.get("content_free_bias"),
            cfg.calibrate_on,
            requested=cfg.calibrate,
            reviewed=reviewed,
        )
    if n_todo:  # what evaluate reports of the teacher: it never loads it again to time it
        store.manifest["teacher_rows_per_s"] = n_todo / elapsed
        store.manifest["teacher_batch_size"] = batch_limits(cfg)[0]
        # the teacher as its backend describes itself: model, description, size where known
        store.manifest["teacher_spec"] = asdict(dataclasses.replace(teacher.spec(), backend=cfg.backend))
        if teacher.usage:  # hosted: tokens, requests and cost of this run
            store.manifest["usage"] = {**teacher.usage, "cost": teacher.spent()}
        store.save_manifest()


def write_merged(cfg: AnnotateConfig, root: Path) -> None:
    """--only-deferred: OUT/merged.csv, the student's label where it answered and the teacher's where it deferred."""
    merged = Run.of(cfg).merged
    guard_files(cfg.out, [merged.name])
    counts = merge_answers(cfg.data, root, merged)
    print(
        f"annotate: {merged}: {counts['rows']} rows, {counts['teacher']} labelled by the teacher, "
        f"{counts['rows'] - counts['teacher']} by the student (of them deferred: {counts['failed']} the "
        "teacher failed on, "
        f"{counts['not_annotated']} not annotated)"
    )


def check_same_rows(store: ChunkStore, selected: dict, n_chunks: int, grows: bool) -> None:
    """Stop when the rows to annotate are not those the run began with (edited, added or removed)."""
    hint = "pass --restart-annotations to annotate the input again from the start, or another --out"
    beyond = sorted(
        p.name
        for p in store.root.glob("part-*.csv")
        if p.is_file() and re.fullmatch(r"part-\d{5}\.csv", p.name) and int(p.name[5:10]) >= n_chunks
    )
    if beyond:
        raise ManifestError(
            f"the input shrank since this run began: {beyond[0]} holds rows that are no longer in it; {hint}"
        )
    before = store.manifest.get("selected_rows")
    if before and before != selected and not (grows and selected["rows"] > before["rows"]):
        what = (
            "rows were edited"
            if before["rows"] == selected["rows"]
            else f"{before['rows']} rows then, {selected['rows']} now"
        )
        raise ManifestError(f"the input changed since this run began ({what}); {hint}")


def chunk_frame(chunk: pd.DataFrame, labels: list[str], teacher: str, prompt_hash: str) -> pd.DataFrame:
    """An empty output frame for a chunk: the input columns plus every annotation column."""
    frame = chunk[["id", "text", "gold", "split"]].copy()
    frame["teacher_label"] = ""
    for col in label_columns(labels) + label_columns(labels, raw=True) + ["label_mass"]:
        frame[col] = np.nan
    frame["flags"] = ""
    frame["teacher"] = teacher
    frame["prompt_hash"] = prompt_hash
    frame["error_type"] = ""
    frame["error_message"] = ""
    return frame


def fill(frame: pd.DataFrame, index, results: list[Annotation], labels: list[str]) -> None:
    """Write the teacher's answers into ``frame`` at ``index`` (calibrated columns = raw until finalize)."""
    for i, ann in zip(index, results):
        frame.loc[i, "error_type"], frame.loc[i, "error_message"] = ann.error_type, ann.error_message
        frame.loc[i, "flags"] = ann.flags
        frame.loc[i, "teacher_label"] = ann.hard_label
        if ann.logprobs is None:
            continue
        frame.loc[i, label_columns(labels, raw=True)] = ann.logprobs
        frame.loc[i, label_columns(labels)] = ann.logprobs
        frame.loc[i, "label_mass"] = ann.mass
        frame.loc[i, "teacher_label"] = labels[int(np.argmax(ann.logprobs))]
