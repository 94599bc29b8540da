"""`clipctl.load`: a clipctl model as plain torch objects with open_clip's calling conventions, so code written for
open_clip (`model.encode_image(preprocess(img)[None])`, `model.encode_text(tokenizer(texts))`,
`model.logit_scale.exp()`) runs on it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from clipctl.data.text import TextTokenizer
from clipctl.errors import UsageError
from clipctl.interop.bundle import Bundle, open_bundle
from clipctl.model.clip import CLIPModel


class CLIP(nn.Module):
    """open_clip's `CLIP` face of a clipctl model: `encode_image(images, normalize=False)`,
    `encode_text(text, normalize=False)`, `forward(image, text) -> (image_features, text_features,
    logit_scale.exp())` with normalised features, and `logit_scale = ln(1/τ)` (not trained here)."""

    def __init__(self, clip: CLIPModel, temperature: float, context_length: int) -> None:
        super().__init__()
        self.clip = clip
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=False)
        self.context_length = context_length
        self.embed_dim = clip.embed_dim

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_image(image, normalize=normalize)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_text(text, normalize=normalize)

    def forward(
        self, image: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        return image_features, text_features, self.logit_scale.exp()


class Tokenizer:
    """open_clip's tokenizer call: `tokenizer("text" or [texts]) -> LongTensor (n, context_length)`, padded with the
    model's pad id. Texts are cleaned first as `clipctl eval` cleans captions and zero-shot prompts: the model's
    preprocessing record (`clipctl.model.preprocess.text_cleaner`; by default lower-cased, punctuation removed)."""

    def __init__(self, tokenizer: TextTokenizer, clean: Callable[[str], str]) -> None:
        self.tokenizer = tokenizer
        self.clean = clean
        self.context_length = tokenizer.max_len
        self.pad_id = tokenizer.pad_id

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        if context_length is not None and context_length != self.context_length:
            raise UsageError(
                f"context_length = {context_length}: this model's tokenizer pads to {self.context_length} tokens"
            )
        return self.tokenizer.encode([self.clean(text) for text in ([texts] if isinstance(texts, str) else texts)])


def to_rgb(image: Image.Image) -> Image.Image:
    """What clipctl's image readers do before the transform (a module function, so DataLoader workers can pickle it)."""
    return image.convert("RGB")


def preprocess_of(bundle: Bundle) -> T.Compose:
    """PIL image (any mode) -> the normalised tensor `clipctl eval` feeds the model."""
    return T.Compose([to_rgb, *bundle.transform().transforms])


def load(path: str | Path, device: torch.device | str = "cpu") -> tuple[CLIP, Tokenizer, T.Compose]:
    """`model, tokenizer, preprocess` of a run directory, a checkpoint or an exported folder (either layout).

    The model is in eval mode on `device`; its features equal what `clipctl eval` computes for the same inputs.
    """
    bundle = open_bundle(path, device)
    model = CLIP(bundle.model, bundle.temperature, bundle.tokenizer.max_len).to(device)
    return model.eval(), Tokenizer(bundle.tokenizer, bundle.clean_text()), preprocess_of(bundle)
