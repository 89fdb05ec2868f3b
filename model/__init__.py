"""Bilingual referring image segmentation network (MUTAN + LE + LA + CLAF, ACM TIST 2021).

Names are imported on first use (PEP 562), so that ``model.errors`` and ``model.config`` load
without torch: the CLI and the steps that never run the network stay fast to start."""

from importlib import import_module

_EXPORTS = {
    "CheckpointError": "model.errors",
    "ConfigError": "model.errors",
    "RefsegError": "model.errors",
    "ModelConfig": "model.config",
    "ablation_rows": "model.config",
    "load_config": "model.config",
    "atomic_save": "model.checkpoint",
    "load_checkpoint": "model.checkpoint",
    "save_checkpoint": "model.checkpoint",
    "segmentation_loss": "model.loss",
    "RefSegNetwork": "model.network",
    "build_model": "model.network",
    "autocast_context": "model.inference",
    "forward": "model.inference",
    "predict": "model.inference",
    "predict_batch": "model.inference",
    "prepare_model": "model.inference",
    "select_device": "model.inference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
