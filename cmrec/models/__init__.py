"""Models: Continual Memory and its presets, behind one registry."""

from cmrec.models.cm import ContinualMemoryModel
from cmrec.models.config import CMConfig
from cmrec.models.registry import DataSpec, build_model, model_config, model_names
from cmrec.output import ModelOutput

__all__ = [
    "CMConfig",
    "ContinualMemoryModel",
    "DataSpec",
    "ModelOutput",
    "build_model",
    "model_config",
    "model_names",
]
