"""evaluation: compare student, teacher and gold; write a report with plots.

The names below are imported on first use."""

from distillery.core.lazy import lazy_package

lazy_package(
    __name__,
    {
        "EvaluateConfig": "distillery.evaluation.config",
        "evaluate": "distillery.evaluation.evaluate",
        "predict_student": "distillery.evaluation.evaluate",
        **dict.fromkeys(
            ("agreement_metrics", "classification_metrics", "expected_calibration_error"),
            "distillery.evaluation.metrics",
        ),
        "ReportData": "distillery.evaluation.report",
        "render_report": "distillery.evaluation.report",
    },
)
