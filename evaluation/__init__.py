"""evaluation: compare student, teacher and gold; write a report with plots."""

from distillery.evaluation.config import EvaluateConfig
from distillery.evaluation.evaluate import evaluate, predict_student
from distillery.evaluation.metrics import agreement_metrics, classification_metrics, expected_calibration_error
from distillery.evaluation.report import ReportData, render_report

__all__ = [
    "EvaluateConfig",
    "ReportData",
    "agreement_metrics",
    "classification_metrics",
    "evaluate",
    "expected_calibration_error",
    "predict_student",
    "render_report",
]
