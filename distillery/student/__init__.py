"""student: a saved student — its kinds, loading it, its probabilities, the defer statistics and its
card; below every stage that trains, evaluates, reviews, predicts or exports with it.

    from distillery.student import load_student
    student = load_student("data/runs/demo/student")          # or .../student-onnx
    probs = student.probabilities(["great film", "awful"])    # (n, n_labels), rows sum to 1

``kinds`` (the ``student_kinds`` registry's built-in entries; how a student is built, saved and
loaded back), ``runtime`` (:class:`Student`, :func:`load_student`), ``defer`` (answer or defer:
:func:`pick_threshold`) and ``card`` (the model card, :func:`write_card`). It imports only
``distillery.core``, and each name on first use.
"""

from distillery.core.lazy import lazy_package

lazy_package(
    __name__,
    {
        **dict.fromkeys(("push_to_hub", "shareable_name", "write_card"), "distillery.student.card"),
        **dict.fromkeys(
            ("clopper_pearson_lower", "coverage_curve", "pick_threshold", "plot_coverage"), "distillery.student.defer"
        ),
        **dict.fromkeys(
            (
                "STUDENT_FILE",
                "StudentKind",
                "StudentSettings",
                "keep_trainable_fp32",
                "load_trained_student",
                "save_student",
                "student_kind",
                "trainable_parameters",
            ),
            "distillery.student.kinds",
        ),
        **dict.fromkeys(
            ("ONNX_FILE", "Student", "load_student", "predict_probabilities", "size_on_disk"),
            "distillery.student.runtime",
        ),
    },
)
