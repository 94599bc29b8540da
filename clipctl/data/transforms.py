"""Image transforms for training and evaluation (PIL in, normalised float tensor out).

Augmentation is deliberately light and geometry/colour-safe: captions name colours and positions
("a red star in the top left"), so there is no horizontal flip and no hue jitter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torchvision import transforms as T

from clipctl.errors import UsageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Normalize = Literal["clip", "imagenet"]


def normalization(kind: str = "clip") -> T.Normalize:
    if kind == "clip":
        return T.Normalize(CLIP_MEAN, CLIP_STD)
    if kind == "imagenet":
        return T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    raise UsageError(f'eval.normalize = {kind!r}: expected "clip" or "imagenet"')


def train_transform(image_size: int, augment: bool = True, normalize: Normalize = "clip") -> Callable:
    """RandomResizedCrop(scale 0.5-1) + mild brightness/contrast/saturation jitter + normalisation.

    `augment=False` gives the deterministic eval pipeline (for ablations and exact comparisons).
    """
    if not augment:
        return eval_transform(image_size, normalize)
    return T.Compose(
        [
            T.RandomResizedCrop(
                image_size, scale=(0.5, 1.0), interpolation=T.InterpolationMode.BICUBIC, antialias=True
            ),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1),
            T.ToTensor(),
            normalization(normalize),
        ]
    )


def eval_transform(image_size: int, normalize: Normalize = "clip") -> Callable:
    """Resize the short side to `image_size` (bicubic), center crop, normalise (CLIP, or ImageNet for course parity)."""
    return T.Compose(
        [
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.CenterCrop(image_size),
            T.ToTensor(),
            normalization(normalize),
        ]
    )
