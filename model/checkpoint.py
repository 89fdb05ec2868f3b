"""Self-describing checkpoints, safe to read with ``torch.load(weights_only=True)``.

File layout (a plain dict): {"format": "bilingual-refseg/model-v1", "config": cfg.to_dict(),
"vocab_size": int, "embed_dim": int, "state_dict": {name: tensor}, "extra": JSON-able dict}.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch

from model.config import ModelConfig
from model.errors import CheckpointError
from model.network import RefSegNetwork, build_model

FORMAT = "bilingual-refseg/model-v1"


def save_checkpoint(path: str, model: RefSegNetwork, cfg: ModelConfig | None = None,
                    extra: dict[str, Any] | None = None) -> None:
    cfg = cfg or model.cfg
    if cfg.backbone_format == "auto":  # the checkpoint carries the format the network was built in
        cfg = cfg.replace(backbone_format=model.cfg.backbone_format)
    extra = dict(extra or {})
    try:
        extra = json.loads(json.dumps(extra))  # plain JSON values only (weights_only-loadable)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint extra must be JSON-able: {exc}") from exc
    payload = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "vocab_size": int(model.vocab_size),
        "embed_dim": int(cfg.embed_dim),
        "state_dict": {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()},
        "extra": extra,
    }
    atomic_save(payload, path)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a crash (or SIGKILL) never
    leaves half a file under the final name."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"checkpoint {path!r} cannot be loaded safely "
                              f"(weights_only): {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path!r} is not a {FORMAT} file")
    for key in ("config", "vocab_size", "embed_dim", "state_dict", "extra"):
        if key not in payload:
            raise CheckpointError(f"checkpoint {path!r} lacks the {key!r} entry")
    return payload


def load_checkpoint(path: str, map_location: str | torch.device = "cpu"
                    ) -> tuple[RefSegNetwork, ModelConfig, dict[str, Any]]:
    payload = read_checkpoint(path, map_location)
    try:
        cfg = ModelConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path!r}: bad config: {exc}") from exc
    if int(payload["embed_dim"]) != cfg.embed_dim:
        raise CheckpointError(f"checkpoint {path!r}: embed_dim {payload['embed_dim']} does not "
                              f"match its config ({cfg.embed_dim})")
    model = build_model(cfg, int(payload["vocab_size"]), None, load_backbone=False)
    state = payload["state_dict"]
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path!r} does not fit its config: missing keys "
                              f"{missing[:20]}, unexpected keys {unexpected[:20]}")
    bad = [k for k in want if tuple(want[k].shape) != tuple(state[k].shape)]
    if bad:
        raise CheckpointError(f"checkpoint {path!r}: shape mismatch for {bad[:20]}")
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, cfg, dict(payload["extra"])
