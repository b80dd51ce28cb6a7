"""distill: train a small student on the teacher's hard and soft labels."""

from distillery.distill.config import DistillConfig
from distillery.distill.data import build_dataloaders, load_training_rows
from distillery.distill.losses import KDLoss, hybrid_kd_loss
from distillery.distill.train import distill
from distillery.student.kinds import load_student, load_trained_student

__all__ = [
    "DistillConfig",
    "KDLoss",
    "build_dataloaders",
    "distill",
    "hybrid_kd_loss",
    "load_student",
    "load_trained_student",
    "load_training_rows",
]

from distillery.core.callable_module import callable_module  # noqa: E402

callable_module(__name__, distill)  # distillery.distill(cfg) runs the stage
