"""Image transforms for training and evaluation (PIL in, normalised float tensor out).

Augmentation is deliberately light and geometry/colour-safe: captions name colours and positions
("a red star in the top left"), so there is no horizontal flip and no hue jitter. Which size, mean/std and
interpolation a model uses is its preprocessing record's (`clipctl.model.preprocess`), which calls these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from torchvision import transforms as T

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Interpolation = Literal["bicubic", "bilinear", "nearest"]
INTERPOLATIONS: dict[str, T.InterpolationMode] = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


def train_transform(
    image_size: int,
    augment: bool = True,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    interpolation: Interpolation = "bicubic",
) -> Callable:
    """RandomResizedCrop(scale 0.5-1) + mild brightness/contrast/saturation jitter + normalisation.

    `augment=False` gives the deterministic eval pipeline (for ablations and exact comparisons).
    """
    if not augment:
        return eval_transform(image_size, mean, std, interpolation)
    return T.Compose(
        [
            T.RandomResizedCrop(
                image_size, scale=(0.5, 1.0), interpolation=INTERPOLATIONS[interpolation], antialias=True
            ),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1),
            T.ToTensor(),
            T.Normalize(tuple(mean), tuple(std)),
        ]
    )


def eval_transform(
    image_size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    interpolation: Interpolation = "bicubic",
) -> Callable:
    """Resize the short side to `image_size`, center crop, normalise."""
    return T.Compose(
        [
            T.Resize(image_size, interpolation=INTERPOLATIONS[interpolation], antialias=True),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(tuple(mean), tuple(std)),
        ]
    )
