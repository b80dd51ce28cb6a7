"""serve: use a saved student — load it, label new rows, export it to ONNX, describe it in a model card."""

from serve.card import write_card
from serve.config import ExportConfig, PredictConfig
from serve.defer import coverage_curve, pick_threshold
from serve.export import export
from serve.predict import predict
from serve.student import Student, load_student, predict_probabilities, size_on_disk

__all__ = [
    "ExportConfig", "PredictConfig", "Student", "coverage_curve", "export", "load_student", "pick_threshold", "predict",
    "predict_probabilities", "size_on_disk", "write_card",
]
