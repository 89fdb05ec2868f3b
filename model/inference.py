"""Inference on one original-resolution image: fit it to cfg.input_size (stretch or pad,
model/geometry.py), forward, bring the probability map back to the image's size. CUDA with bfloat16
autocast when the model lives on a GPU."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from model.geometry import InputFit
from model.network import RefSegNetwork


def select_device(prefer: str | None = None) -> torch.device:
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_context(device: torch.device | str, enabled: bool = True):
    """bfloat16 autocast on CUDA, nothing on CPU."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: RefSegNetwork, device: torch.device | str) -> RefSegNetwork:
    """Move to ``device``; channels_last on CUDA (when the config asks for it)."""
    device = torch.device(device)
    model = model.to(device)
    if device.type == "cuda" and model.cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def forward(model: RefSegNetwork, images: torch.Tensor, tokens: torch.Tensor,
            lengths: torch.Tensor, image_index: torch.Tensor,
            return_attention: bool = False) -> dict[str, torch.Tensor]:
    """The network on a batch, on the model's device: inputs moved there (channels_last images on
    CUDA when the config asks for it), bfloat16 autocast on CUDA when ``cfg.amp_bf16``. The one
    place that runs the network for training, validation, evaluation and serving.
    ``return_attention``: also the LA attention maps P^ of each level (the evaluation report)."""
    cfg = getattr(model, "module", model).cfg  # a DistributedDataParallel wrapper: its module's
    device = next(model.parameters()).device
    images = images.to(device, non_blocking=True)
    if device.type == "cuda" and cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast_context(device, cfg.amp_bf16):
        return model(images, tokens.to(device), lengths.to(device), image_index.to(device),
                     return_attention=return_attention)


def _image_tensor(image: np.ndarray, fit: InputFit | int, device: torch.device) -> torch.Tensor:
    """uint8 HxWx3 -> float [1, 3, S, S] in [0, 1] (``fit``: an InputFit, or S for stretch)."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"image must be uint8 HxWx3, got {arr.dtype} {arr.shape}")
    fit = fit if isinstance(fit, InputFit) else InputFit(int(fit))
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(device).permute(2, 0, 1)[None].float() / 255
    return fit.image(x)


def _tokens_tensor(token_lists: list[list[int]], device: torch.device):
    if not token_lists:
        raise ValueError("no token lists given")
    for i, t in enumerate(token_lists):
        if len(t) == 0:
            raise ValueError(f"token list {i} is empty")
    t_max = max(len(t) for t in token_lists)
    tokens = torch.zeros(len(token_lists), t_max, dtype=torch.long)
    for i, t in enumerate(token_lists):
        tokens[i, : len(t)] = torch.as_tensor(list(t), dtype=torch.long)
    lengths = torch.tensor([len(t) for t in token_lists], dtype=torch.long)
    return tokens.to(device), lengths.to(device)


@torch.no_grad()
def predict_batch(model: RefSegNetwork, image: np.ndarray, token_lists: list[list[int]],
                  device: str | torch.device | None = None) -> np.ndarray:
    """One image, many expressions -> float32 [K, H, W] sigmoid probabilities at the image size."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    if next(model.parameters()).device != dev:
        model = prepare_model(model, dev)
    was_training = model.training
    model.eval()
    h, w = np.asarray(image).shape[:2]
    fit = InputFit.of(model.cfg)
    x = _image_tensor(image, fit, dev)
    tokens, lengths = _tokens_tensor(token_lists, dev)
    index = torch.zeros(len(token_lists), dtype=torch.long, device=dev)
    logits = forward(model, x, tokens, lengths, index)["logits"]
    prob = torch.sigmoid(fit.restore(logits, (h, w)))
    if was_training:
        model.train()
    return prob[:, 0].cpu().numpy().astype(np.float32)


def predict(model: RefSegNetwork, image: np.ndarray, tokens: list[int],
            device: str | torch.device | None = None) -> np.ndarray:
    """float32 HxW probability that each pixel belongs to the referred object."""
    return predict_batch(model, image, [list(tokens)], device)[0]
