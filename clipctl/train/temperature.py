"""The temperature τ a checkpoint records for inference (`logit_scale = ln(1/τ)` in an open_clip export).

Retrieval and zero-shot rankings do not depend on τ; what does is every softmax over similarities a consumer
computes (zero-shot class probabilities, open_clip's `logits_per_image`), so the recorded τ is the scale the
model's similarities were trained at:
- one τ for all samples (clip, sogclr, fastclip_v3): that τ, fixed or as learned at the checkpoint;
- per-sample τ (isogclr, isogclr_new, isogclr_new_v2): the mean of the current per-sample τ of both sides
  over the samples visited so far, the temperature the loss applied on average (tau_init is only where
  they started; the box bounds are what none of them need to reach). Under sharded state the main process
  holds every K-th sample, a uniform subsample, and averages those;
- a temperature network (isogclr_new, temp_net = true): τ depends on the input, so no single learned value
  exists without data; `tau_init`, the τ the network starts from for every input, is recorded.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def inference_temperature(loss: Any) -> tuple[float, str] | None:
    """(τ, how it was chosen) for `loss`, or None for a loss with no temperature at all."""
    cfg = getattr(loss, "cfg", None)
    if getattr(loss, "use_temp_net", False):
        return float(cfg.tau_init), "tau_init (a temperature network's τ depends on the input)"
    per_sample = _per_sample_mean(loss)
    if per_sample is not None:
        return per_sample
    theta = getattr(loss, "theta", None)
    if isinstance(theta, torch.Tensor):
        how = "learned" if isinstance(theta, torch.nn.Parameter) else "fixed"
        return math.exp(-float(theta.detach())), f"loss {loss.name}: {how} τ"
    for key in ("temperature", "tau_init"):
        value = getattr(cfg, key, None)
        if isinstance(value, (int, float)) and value > 0:
            return float(value), f"loss {loss.name}: loss.{key}"
    return None


def _per_sample_mean(loss: Any) -> tuple[float, str] | None:
    """Mean of the visited samples' τ_I and τ_T (a sample is visited once its moving estimate is finite)."""
    state = getattr(loss, "state", None)
    columns = getattr(state, "columns", ())
    if "tau_I" not in columns or "tau_T" not in columns:
        return None
    tensors = state.tensors
    taus = [tensors[f"tau_{side}"][torch.isfinite(tensors[f"log_u_{side}"])] for side in ("I", "T")]
    visited = int(taus[0].numel())
    if not visited:
        return float(loss.cfg.tau_init), f"loss {loss.name}: tau_init (no sample visited yet)"
    mean = float(torch.cat(taus).double().mean())
    return mean, f"loss {loss.name}: mean of the per-sample τ_I and τ_T of {visited} visited samples"
