"""The CLIP module: image tower + text tower, linear projections to `embed_dim`, L2 normalisation.

Projections have no bias (as in OpenAI CLIP): a bias would only shift every embedding by the same
vector before normalisation. Features are normalised in at least float32 so the losses get full
precision under autocast (float64 inputs stay float64).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from clipctl.errors import UsageError
from clipctl.model.config import ModelConfig
from clipctl.model.image import build_image_tower
from clipctl.model.text import TextTower, build_text_tower


class CLIPModel(nn.Module):
    """`model(images, token_ids) -> (image_features, text_features)`, both L2-normalised, shape (B, embed_dim)."""

    def __init__(
        self,
        image_tower: nn.Module,
        text_tower: TextTower,
        embed_dim: int,
        lock_image: bool = False,
        lock_text: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.image_proj = nn.Linear(image_tower.num_features, embed_dim, bias=False)
        self.text_proj = nn.Linear(text_tower.width, embed_dim, bias=False)
        self.embed_dim = embed_dim
        self.lock_image = lock_image
        self.lock_text = lock_text
        self.channels_last = channels_last
        # Locked towers are frozen feature extractors; the projections on top of them still train.
        self.image_tower.requires_grad_(not lock_image)
        self.text_tower.requires_grad_(not lock_text)
        if channels_last:
            self.image_tower.to(memory_format=torch.channels_last)
        self.train()

    def train(self, mode: bool = True) -> CLIPModel:
        """Locked towers stay in eval mode so BatchNorm statistics and dropout stay as loaded."""
        super().train(mode)
        if self.lock_image:
            self.image_tower.eval()
        if self.lock_text:
            self.text_tower.eval()
        return self

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Projected image features, L2-normalised unless `normalize = False` (open_clip's raw features)."""
        if self.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with _frozen(self.lock_image):
            features = self.image_tower(images)
        projected = self.image_proj(features)
        return _normalize(projected) if normalize else projected

    def encode_text(self, token_ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Projected text features, L2-normalised unless `normalize = False` (open_clip's raw features)."""
        with _frozen(self.lock_text):
            features = self.text_tower(token_ids)
        projected = self.text_proj(features)
        return _normalize(projected) if normalize else projected

    def forward(self, images: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(token_ids)

    @torch.no_grad()
    def tower_features(self, images: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The towers' pooled outputs (before the projections): what a locked-tower run can compute once."""
        if self.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.image_tower(images), self.text_tower(token_ids)

    def load_towers(self, state_dict: dict[str, torch.Tensor], source: str, projections: bool = False) -> None:
        """Copy both towers' weights (and, with `projections`, the projections') from a CLIP state dict.

        The architectures must match exactly: every key of the copied parts present with the same shape.
        """
        prefixes = ("image_tower.", "text_tower.") + (("image_proj.", "text_proj.") if projections else ())
        own = {k: v for k, v in self.state_dict().items() if k.startswith(prefixes)}
        missing = sorted(k for k in own if k not in state_dict)
        reshaped = sorted(k for k in own if k in state_dict and state_dict[k].shape != own[k].shape)
        if missing or reshaped:
            key = (missing or reshaped)[0]
            found = "missing" if missing else f"shape {tuple(state_dict[key].shape)} vs {tuple(own[key].shape)}"
            raise UsageError(
                f"model.init_from = {source}: its weights do not fit this recipe's [model] ({len(missing)} missing, "
                f"{len(reshaped)} of another shape; first: {key}, {found}); use the checkpoint's model settings"
            )
        self.load_state_dict({**self.state_dict(), **{k: state_dict[k] for k in own}})


class ProjectionHeads(nn.Module):
    """Training module of a run whose towers are both locked and cached: it maps cached tower features
    through the model's own projections (shared parameters), so `heads(f_img, f_txt)` equals
    `model(images, tokens)` for the images and tokens those features came from."""

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.image_proj, self.text_proj = model.image_proj, model.text_proj

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _normalize(self.image_proj(image_features)), _normalize(self.text_proj(text_features))


def build_model(
    model_cfg: ModelConfig,
    vocab_size: int,
    pad_id: int,
    *,
    load_weights: bool = True,
    max_len: int | None = None,
) -> CLIPModel:
    """Build the CLIP module of a recipe's `[model]` table for a tokenizer with `vocab_size` and `pad_id`.

    `load_weights = False` builds the same architecture without fetching pretrained weights, for callers
    that load a checkpoint's state dict next (eval, resume). `max_len` (the tokenizer's length) is checked
    against the text model's position embeddings.
    """
    if vocab_size < 1 or not 0 <= pad_id < vocab_size:
        raise UsageError(f"tokenizer: pad id {pad_id} must lie in [0, vocab_size = {vocab_size})")
    image_tower = build_image_tower(model_cfg, load_weights=load_weights)
    text_tower = build_text_tower(model_cfg, vocab_size, pad_id, load_weights=load_weights, max_len=max_len)
    if model_cfg.grad_checkpointing:
        _enable_image_checkpointing(image_tower, model_cfg.image_model)
        text_tower.enable_grad_checkpointing()
    return CLIPModel(
        image_tower,
        text_tower,
        model_cfg.embed_dim,
        lock_image=model_cfg.lock_image,
        lock_text=model_cfg.lock_text,
        channels_last=model_cfg.channels_last,
    )


def _enable_image_checkpointing(tower: nn.Module, name: str) -> None:
    try:
        tower.set_grad_checkpointing(True)
    except (AssertionError, NotImplementedError, AttributeError) as err:
        raise UsageError(
            f"model.grad_checkpointing = true: timm model '{name}' does not support it; "
            "set model.grad_checkpointing = false"
        ) from err


def _frozen(locked: bool) -> contextlib.AbstractContextManager:
    """A locked tower runs without autograd: no graph and no stored activations, even where gradient
    checkpointing made its inputs require grad (transformers' `enable_input_require_grads`)."""
    return torch.no_grad() if locked else contextlib.nullcontext()


def _normalize(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=-1)
