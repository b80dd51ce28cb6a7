"""distill: train a small student on the teacher's hard and soft labels.

``distillery.distill(cfg)`` runs the stage; the names below are imported on first use."""

from distillery.core.lazy import lazy_package

lazy_package(
    __name__,
    {
        "DistillConfig": "distillery.distill.config",
        "build_dataloaders": "distillery.distill.data",
        "load_training_rows": "distillery.distill.data",
        "KDLoss": "distillery.distill.losses",
        "hybrid_kd_loss": "distillery.distill.losses",
        "distill": "distillery.distill.train",
        "load_student": "distillery.student.kinds",
        "load_trained_student": "distillery.student.kinds",
    },
    call="distill",
)
