"""serve: use a saved student — label new rows with it (predict), export it to ONNX (export).

Loading a student, its defer threshold and its card live one floor down, in ``distillery.student``;
the names below that come from there are re-exported so ``from distillery.serve import load_student``
keeps working. Every name is imported on first use.
"""

from distillery.core.lazy import lazy_package

lazy_package(
    __name__,
    {
        "ExportConfig": "distillery.serve.config",
        "PredictConfig": "distillery.serve.config",
        "export": "distillery.serve.export",
        "predict": "distillery.serve.predict",
        **dict.fromkeys(
            ("Student", "load_student", "predict_probabilities", "size_on_disk"), "distillery.student.runtime"
        ),
        "coverage_curve": "distillery.student.defer",
        "pick_threshold": "distillery.student.defer",
        "write_card": "distillery.student.card",
    },
)
