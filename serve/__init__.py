"""serve: use a saved student — label new rows with it (predict), export it to ONNX (export).

Loading a student, its defer threshold and its card live one floor down, in ``distillery.student``;
the names below that come from there are re-exported so ``from distillery.serve import load_student``
keeps working.
"""

from distillery.serve.config import ExportConfig, PredictConfig
from distillery.serve.export import export
from distillery.serve.predict import predict
from distillery.student import (
    Student,
    coverage_curve,
    load_student,
    pick_threshold,
    predict_probabilities,
    size_on_disk,
    write_card,
)

__all__ = [
    "ExportConfig",
    "PredictConfig",
    "Student",
    "coverage_curve",
    "export",
    "load_student",
    "pick_threshold",
    "predict",
    "predict_probabilities",
    "size_on_disk",
    "write_card",
]
