"""serve: use a saved student — load it, label new rows, export it to ONNX, describe it in a model card."""

from distillery.serve.card import write_card
from distillery.serve.config import ExportConfig, PredictConfig
from distillery.serve.defer import coverage_curve, pick_threshold
from distillery.serve.export import export
from distillery.serve.predict import predict
from distillery.serve.student import Student, load_student, predict_probabilities, size_on_disk

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
