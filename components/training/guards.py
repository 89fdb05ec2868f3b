"""Model configurations the trainer refuses to train, checked where training builds the model.

Loading such a config stays possible (FLOP counts, tests, ``refseg train --help``); training it
would waste a run. One case today: a frozen pretrained-style backbone (``resnet*``) without
weights. Its features are those of a random network (measured std about 2e4 on Res4 and 5e4 on
Res5 of a random ResNet-101) and, frozen, nothing would ever change them. The ``paper`` preset is
exactly that until ``backbone_weights`` names a file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from components.errors import ConfigError

if TYPE_CHECKING:
    from model.config import ModelConfig


def check_trainable(cfg: ModelConfig) -> None:
    """Raise ConfigError (one line, naming the settings and the two ways out) for a config that
    would train on a frozen random backbone."""
    if cfg.backbone.startswith("resnet") and cfg.backbone_frozen and not cfg.backbone_weights:
        raise ConfigError(
            f"{cfg.name}: backbone_frozen: true with backbone_weights: null would train on a "
            f"frozen random {cfg.backbone}; give backbone_weights (--set "
            "backbone_weights=FILE) or set backbone_frozen: false (--set backbone_frozen=false) "
            "to train it from scratch")
