"""Bilingual referring image segmentation network (MUTAN + LE + LA + CLAF, ACM TIST 2021)."""

from model.checkpoint import atomic_save, load_checkpoint, save_checkpoint
from model.config import ModelConfig, ablation_rows, load_config
from model.errors import CheckpointError, ConfigError, RefsegError
from model.loss import segmentation_loss
from model.network import RefSegNetwork, build_model
from model.predict import (
    autocast_context,
    forward,
    predict,
    predict_batch,
    prepare_model,
    select_device,
)

__all__ = [
    "CheckpointError",
    "ConfigError",
    "RefsegError",
    "atomic_save",
    "forward",
    "ModelConfig",
    "RefSegNetwork",
    "ablation_rows",
    "autocast_context",
    "build_model",
    "load_checkpoint",
    "load_config",
    "predict",
    "predict_batch",
    "prepare_model",
    "save_checkpoint",
    "segmentation_loss",
    "select_device",
]
