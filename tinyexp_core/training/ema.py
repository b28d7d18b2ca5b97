"""Exponential moving average of model weights (TinyExp 0.0.1's update_ema)."""

from __future__ import annotations

import torch

from tinyexp_core.checkpoint import unwrap_model
from tinyexp_core.config.exceptions import ConfigValueError, ModelMismatchError

__all__ = ["update_ema"]


def _same_names(kind: str, ema: dict[str, torch.Tensor], src: dict[str, torch.Tensor]) -> None:
    # Matching by name, not by position, so a structural difference fails loudly
    # instead of averaging unrelated tensors.
    missing = sorted(src.keys() - ema.keys())
    extra = sorted(ema.keys() - src.keys())
    if missing:
        raise ModelMismatchError(f"EMA model lacks {kind} {missing[0]!r} of the model")
    if extra:
        raise ModelMismatchError(f"EMA model has {kind} {extra[0]!r} that the model lacks")


def update_ema(ema_model: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """In place: ema = decay * ema + (1 - decay) * param for parameters; buffers copied."""
    # Written as `not (0 <= d <= 1)` so that NaN is rejected too.
    if isinstance(decay, bool) or not (0.0 <= float(decay) <= 1.0):
        raise ConfigValueError("decay", decay, "a float in [0, 1]")
    ema, src = unwrap_model(ema_model), unwrap_model(model)
    ema_params, src_params = dict(ema.named_parameters()), dict(src.named_parameters())
    ema_buffers, src_buffers = dict(ema.named_buffers()), dict(src.named_buffers())
    _same_names("parameter", ema_params, src_params)
    _same_names("buffer", ema_buffers, src_buffers)
    with torch.no_grad():
        for name, ema_param in ema_params.items():
            # The EMA copy may live on another device or in another dtype (e.g. fp32 on CPU).
            param = src_params[name].to(device=ema_param.device, dtype=ema_param.dtype)
            ema_param.mul_(decay).add_(param, alpha=1.0 - decay)
        for name, ema_buffer in ema_buffers.items():
            ema_buffer.copy_(src_buffers[name])
