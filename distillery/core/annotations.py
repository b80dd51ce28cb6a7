"""The annotations format, for every stage that reads a run's teacher labels: ``OUT/annotations/part-NNNNN.csv``
plus ``manifest.json`` (docs/file-formats.md). Reading it needs pandas alone; writing it is annotate's
(``distillery.annotate.chunks``).

Each chunk names the run that wrote it (``run_id``) and its checksum is in the manifest; a chunk cut
or edited after it was written, or a run that did not finish, is a one-line :class:`ManifestError`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from distillery.core.errors import UserError
from distillery.core.fingerprints import sha256_file

if TYPE_CHECKING:  # read lazily: the teacher's description (TeacherSpec) is needed where pandas is not
    import numpy as np
    import pandas as pd

__all__ = [
    "AUTO_MIN_GOLD",
    "FORMAT",
    "ManifestError",
    "TeacherSpec",
    "label_columns",
    "read_annotations",
    "read_chunk",
    "read_manifest",
    "run_id",
    "teacher_probabilities",
]

FORMAT = "distillery.annotations/1"
# --calibrate auto fits against gold labels once the rows hold this many (the report's diagnosis says so too)
AUTO_MIN_GOLD = 50


@dataclass(frozen=True)
class TeacherSpec:
    """The teacher behind an annotation run, as its backend describes itself (``manifest["teacher_spec"]``).

    Args:
        backend: ``--backend`` (local, openai, a plugin's).
        model: the model it asks ("" where the backend names none).
        description: one line for a person.
        parameters, size_bytes: the model's size where the backend knows it (a model in this process).
    """

    backend: str = ""
    model: str = ""
    description: str = ""
    parameters: int | None = None
    size_bytes: int | None = None

    @classmethod
    def of(cls, manifest: dict) -> TeacherSpec:
        """The spec a manifest records; a manifest from before specs: its ``teacher`` and size fields."""
        if "teacher_spec" in manifest:
            return cls(**manifest["teacher_spec"])
        return cls(
            backend=(manifest.get("config") or {}).get("backend", "local"),
            model=manifest.get("teacher", ""),
            parameters=manifest.get("teacher_parameters"),
            size_bytes=manifest.get("teacher_size_bytes"),
        )


class ManifestError(UserError):
    """The annotations directory is missing, incomplete, or from another teacher/prompt/label set."""


def label_columns(labels: list[str], raw: bool = False) -> list[str]:
    """Column names of the per-label natural-log probabilities (``logprob_<label>``)."""
    return [f"{'raw_' if raw else ''}logprob_{lab}" for lab in labels]


def teacher_probabilities(frame: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """The teacher's calibrated probabilities of ``frame``'s rows; a row with a hard label only
    (a hosted teacher that gave no log-probs) is one-hot."""
    import numpy as np

    probs = np.exp(frame[label_columns(labels)].to_numpy(float))
    hard_only = np.isnan(probs).any(axis=1)
    probs[hard_only] = np.eye(len(labels))[frame.loc[hard_only, "teacher_label"].map(labels.index).to_numpy(int)]
    return probs


def run_id(fingerprint: dict) -> str:
    """A short hash of a run's fingerprint, written into every row of its chunks."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_chunk(path: Path) -> pd.DataFrame:
    """One chunk as strings, its number columns as floats (a blank is NaN)."""
    import numpy as np
    import pandas as pd

    # Text columns keep "NA", "null" etc. as written; only the number columns have blanks.
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ManifestError(
            f"{path}: not a whole chunk ({str(err).splitlines()[0]}); it was cut or edited after it was written; "
            "delete it and rerun 'distillery annotate' to annotate its rows again"
        ) from None
    for col in frame.columns:
        if col.startswith(("logprob_", "raw_logprob_")) or col == "label_mass":
            frame[col] = pd.to_numeric(frame[col].replace("", np.nan))
    return frame


def read_manifest(path: Path) -> dict:
    """A manifest as a dict; one that does not parse is a one-line error naming it (it is never deleted)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ManifestError(
            f"{path}: not a manifest distillery can read ({str(err).splitlines()[0]}); it is kept as it is: "
            "move it away to annotate again, or pass another --out"
        ) from None
    if not isinstance(manifest, dict):
        raise ManifestError(
            f"{path}: expected a JSON object; found {type(manifest).__name__}; move it away, or pass another --out"
        )
    return manifest


def read_annotations(root: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read every chunk of a finished annotation run, checked against its manifest.

    Returns the rows (failed ones included, with ``error_type`` set) and the manifest.
    """
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise ManifestError(
            f"expected an annotations directory with manifest.json; found none in '{root}'; run 'distillery "
            "annotate' first"
        )
    manifest = read_manifest(manifest_path)
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{manifest_path}: expected format {FORMAT}; found {manifest.get('format')!r}")
    if manifest.get("status") != "complete":
        raise ManifestError(
            f"{root}: annotation is not finished (status {manifest.get('status')!r}); rerun the same "
            "'distillery annotate' command to finish it"
        )
    frames = []
    for name, meta in sorted(manifest["chunks"].items()):
        path = root / name
        if not path.is_file():
            raise ManifestError(
                f"{path} is listed in the manifest but missing; rerun 'distillery annotate' to rebuild it"
            )
        if sha256_file(path) != meta["sha256"]:
            raise ManifestError(
                f"{path} does not match its checksum in the manifest (edited or truncated?); delete it and "
                "rerun 'distillery annotate'"
            )
        frames.append(read_chunk(path))
    import pandas as pd

    if not frames:
        raise ManifestError(f"{root}: the manifest lists no chunks; rerun 'distillery annotate' to annotate the rows")
    frame = pd.concat(frames, ignore_index=True)
    twice = frame["id"][frame["id"].duplicated()]
    if len(twice):
        raise ManifestError(
            f"{root}: {twice.nunique()} ids appear in more than one row (e.g. '{twice.iloc[0]}'); the chunks were "
            "mixed from two runs; pass --restart-annotations to 'distillery annotate' to annotate them again"
        )
    needed = ["id", "text", "gold", "split", "teacher_label", *label_columns(manifest["labels"]), "error_type"]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ManifestError(
            f"{root}: chunks lack columns {missing}; they were not written by this version of distillery"
        )
    return frame, manifest
