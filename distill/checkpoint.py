"""distill's checkpoints: what one holds, writing it so that a kill at any instant leaves a whole one,
finding it again, and refusing to resume one trained with other settings or on other rows."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from distillery.core.errors import UserError, full_disk
from distillery.core.fingerprints import rows_fingerprint
from distillery.core.rundir import make_folder, remove_owned, seal_folder, write_json, write_text
from distillery.core.tasks import load_task

if TYPE_CHECKING:
    from accelerate import Accelerator

    from distillery.annotate.config import AnnotateConfig
    from distillery.distill.config import DistillConfig
    from distillery.distill.data import TrainingRows

__all__ = [
    "CHECKPOINTS",
    "check_same_settings",
    "checkpoint_writes",
    "find_checkpoint",
    "keep_trainable_weights",
    "online_fingerprint",
    "save_checkpoint",
    "training_settings",
    "write_refused",
]


def keep_trainable_weights(models: list, weights: list[dict], output_dir: str) -> None:
    """accelerate's save hook: a checkpoint holds the trainable weights only.

    A LoRA student's frozen base is reloaded from its own checkpoint anyway, and a QLoRA base's
    4-bit state (absmax, quant_map, ...) is rejected by a strict load.
    """
    for i, model in enumerate(models):
        trainable = {name for name, param in model.named_parameters() if param.requires_grad}
        weights[i] = {name: tensor for name, tensor in weights[i].items() if name in trainable}


CHECKPOINTS = ("checkpoint", "checkpoint.new", "checkpoint.old")


IGNORED_ON_RESUME = {"resume", "checkpoint_every", "device", "overwrite", "learning_curve", "scaling"}


TRAINING_DATA = "training_data"  # the key of the data's fingerprint in a checkpoint's settings.json


def training_settings(cfg: DistillConfig, data: dict) -> dict:
    """The resolved settings a checkpoint was trained with (those a resume must not change), and under
    ``training_data`` the fingerprint of the rows and labels it trains on (:func:`data_fingerprint`,
    :func:`online_fingerprint`)."""
    return {**{k: v for k, v in cfg.flat().items() if k not in IGNORED_ON_RESUME}, TRAINING_DATA: data}


def online_fingerprint(rows: TrainingRows, source: AnnotateConfig) -> dict:
    """--teacher-mode online: the rows it reads and the settings of the teacher that labels them (its
    weights are not hashed: a model folder retrained in place goes unnoticed)."""
    columns = ["id", "text", "gold", "split"]
    settings = source.flat()
    # annotate's settings declared (option(answers=True)) to change what the teacher answers, and the
    # backend's own but those its settings class lists in SAME_ANSWERS
    same = getattr(type(source.settings), "SAME_ANSWERS", ())
    own = [f.name for f in dataclasses.fields(source.settings) if f.name not in same] if source.settings else []
    answers = [f.name for f in dataclasses.fields(source) if f.metadata.get("answers")] + own
    teacher = {k: settings.get(k) for k in answers}
    return {
        "source": "online",
        "rows": [rows_fingerprint(rows.train, columns), rows_fingerprint(rows.val, columns)],
        "teacher": {**teacher, "prompt_hash": load_task(source.task, rows.labels).prompt_hash()},
    }


def data_change(then: dict, now: dict) -> tuple[str, str] | None:
    """What differs between two fingerprints of the training data, as ``(what, how)`` in words; None when nothing."""
    if then.get("source") != now.get("source"):
        return "the training data", f"{then.get('source')} then, {now.get('source')} now"
    if now["source"] == "online":
        if then["rows"] != now["rows"]:
            return "the input rows", "edited, added or removed"
        keys = sorted(
            k for k in then["teacher"].keys() | now["teacher"].keys() if then["teacher"].get(k) != now["teacher"].get(k)
        )
        if keys:
            return "the teacher settings", ", ".join(
                f"{k} {then['teacher'].get(k)!r} then, {now['teacher'].get(k)!r} now" for k in keys
            )
        return None
    if then["calibration"]["mode"] != now["calibration"]["mode"]:
        return "the annotations", f"calibration {then['calibration']['mode']} then, {now['calibration']['mode']} now"
    chunks = [
        f"{name} {'added' if name not in then['chunks'] else 'removed' if name not in now['chunks'] else 'changed'}"
        for name in sorted(then["chunks"].keys() | now["chunks"].keys())
        if then["chunks"].get(name) != now["chunks"].get(name)
    ]
    if chunks:
        return "the annotations", "chunk " + ", ".join(chunks[:3]) + (
            f" and {len(chunks) - 3} more" if len(chunks) > 3 else ""
        )
    if then["calibration"] != now["calibration"]:
        return "the annotations", f"calibration {now['calibration']['mode']} fitted again"
    if then["reviewed"] != now["reviewed"]:
        return "the reviewed labels", "'distillery review --import'; --hard-labels auto trains on them"
    return None


def check_same_settings(ckpt_dir: Path, settings: dict) -> None:
    """Refuse to resume a checkpoint with other training settings or other training data, naming what changed."""
    path = ckpt_dir / "settings.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    changed = sorted(k for k in set(saved) | set(settings) if k != TRAINING_DATA and saved.get(k) != settings.get(k))
    if changed:
        what = ", ".join(f"{k} {saved.get(k)!r} there, {settings.get(k)!r} now" for k in changed)
        raise UserError(
            f"--resume: the checkpoint in {ckpt_dir} was trained with other settings ({what}); rerun with the "
            "checkpoint's settings, or without --resume to train anew"
        )
    if TRAINING_DATA not in saved:
        raise UserError(
            f"--resume: the checkpoint in {ckpt_dir} records no fingerprint of the rows and labels it trained on (an "
            "older distillery wrote it), so it cannot be checked against the annotations now; rerun without "
            "--resume to train anew"
        )
    change = data_change(saved[TRAINING_DATA], settings[TRAINING_DATA])
    if change:
        raise UserError(
            f"--resume: {change[0]} changed since the checkpoint in {ckpt_dir} was written ({change[1]}); a "
            "resumed student "
            "would have trained on two data sets: rerun without --resume to train anew"
        )


def find_checkpoint(out_dir: Path) -> Path | None:
    """The newest whole checkpoint: ``checkpoint``, or a ``.new``/``.old`` one a kill left mid-swap.

    A checkpoint is whole once its ``progress.json`` (written last) is there.
    """
    whole = [out_dir / name for name in CHECKPOINTS if (out_dir / name / "progress.json").is_file()]
    return max(whole, key=lambda d: json.loads((d / "progress.json").read_text())["step"], default=None)


def write_refused(err: BaseException) -> bool:
    """Whether ``err`` says the disk refused a write: an OSError (full, read-only, over quota, no
    permission), a full disk whichever library raised it (:func:`full_disk`), torch.save's
    "PytorchStreamWriter failed writing" RuntimeError or safetensors' I/O error."""
    if isinstance(err, OSError) or full_disk(err):
        return True
    from safetensors import SafetensorError

    text = str(err)
    return isinstance(err, (RuntimeError, SafetensorError)) and any(
        s in text for s in ("PytorchStreamWriter", "inline_container", "IoError")
    )


def reason(err: BaseException) -> str:
    """The first line of what ``err`` says (an OSError's strerror without its errno), at most 200 characters."""
    return (
        err.strerror if isinstance(err, OSError) and err.strerror else str(err).strip() or type(err).__name__
    ).splitlines()[0][:200]


@contextlib.contextmanager
def checkpoint_writes(out_dir: Path, step: int) -> Iterator[None]:
    """Around :func:`save_checkpoint`: a write the disk refuses stops the run with one line (a
    :class:`UserError`) saying that the last whole checkpoint is kept and how to go on. The half-written
    ``checkpoint.new`` never counts as whole: its ``progress.json`` (written last) is not there."""
    try:
        yield
    except Exception as err:
        if not write_refused(err):
            raise
        fresh = out_dir / CHECKPOINTS[1]
        with contextlib.suppress(OSError):
            (fresh / "progress.json").unlink(missing_ok=True)  # one there would call the torn folder whole
        why = reason(err)
        previous = find_checkpoint(out_dir)
        kept = (
            f"the last whole checkpoint ({previous}, step "
            f"{json.loads((previous / 'progress.json').read_text())['step']}) is kept: free "
            "space, then rerun with --resume to go on from it"
            if previous
            else "there is no earlier checkpoint: free space, then rerun"
        )
        raise UserError(f"could not write the checkpoint of step {step} to {fresh} ({why}); {kept}") from err


# What a checkpoint folder holds until it is sealed: accelerate's save_state, then ours. A file of another
# name in a checkpoint a kill left unsealed is a user's (tests/test_trust3.py checks a real save).
CHECKPOINT_FILES = (
    "model*.safetensors",
    "model*.bin",
    "pytorch_model*.bin",
    "optimizer*.bin",
    "scheduler*.bin",
    "sampler*.bin",
    "random_states_*.pkl",
    "scaler*.pt",
    "custom_checkpoint_*.pkl",
    "torch_rng.pt",
    "best.pt",
    "settings.json",
    "progress.json",
)


def save_checkpoint(
    accelerator: Accelerator, out_dir: Path, progress: dict, best_state: dict | None, settings: dict
) -> None:
    """Model, optimizer, scheduler and RNG states (accelerate) plus our progress, best weights and settings.

    Written to ``checkpoint.new`` and renamed into place once whole; the previous checkpoint
    stays until then, so a kill at any instant leaves one whole checkpoint to resume from.
    """
    import torch

    current, fresh, old = (out_dir / name for name in CHECKPOINTS)
    if accelerator.is_main_process:
        remove_owned(fresh)
        if fresh.is_dir() and not any(fresh.iterdir()):  # empty and unmarked: an older version was killed making it
            fresh.rmdir()
        make_folder(fresh, expect=CHECKPOINT_FILES)  # what accelerate and torch write into it is Distillery's
    accelerator.wait_for_everyone()
    accelerator.save_state(str(fresh))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(torch.get_rng_state(), fresh / "torch_rng.pt")
        if best_state is not None:
            torch.save(best_state, fresh / "best.pt")
        write_json(fresh / "settings.json", settings)
        seal_folder(fresh)  # lists what is there: a file a user saves into it later is never deleted
        write_text(fresh / "progress.json", json.dumps(progress))  # last: the checkpoint is whole
        if current.exists():
            remove_owned(old)
            current.rename(old)
        fresh.rename(current)
        remove_owned(old)
    accelerator.wait_for_everyone()
