"""ImageNet-1k protocol data, vendored: the OpenAI CLIP class names and prompt templates, and the sorted wnids.

Class index i (the order of the sorted wnid folders, as torchvision's ImageFolder assigns it) has wnid
`imagenet_wnids()[i]` and zero-shot name `imagenet_classnames()[i]`. The names are OpenAI's edited list from the
CLIP "Prompt Engineering for ImageNet" notebook, used unchanged by open_clip and CLIP_benchmark so that zero-shot
numbers stay comparable; it contains two duplicated names ("missile" at 657 and 744, "sunglasses" at 836 and 837).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from clipctl.errors import ClipctlError

_EXPECTED = {"imagenet_classnames.txt": 1000, "imagenet_templates.txt": 80, "imagenet_wnids.txt": 1000}


@cache
def _read(name: str) -> tuple[str, ...]:
    path = files("clipctl.data").joinpath("metadata", name)
    lines = tuple(path.read_text(encoding="utf-8").splitlines())
    if len(lines) != _EXPECTED[name]:
        raise ClipctlError(
            f"{path}: {len(lines)} lines instead of {_EXPECTED[name]}; the clipctl installation is damaged, "
            "reinstall it"
        )
    return lines


def imagenet_classnames() -> tuple[str, ...]:
    """The 1,000 OpenAI CLIP ImageNet class names, in class-index order ("tench", "goldfish", ...)."""
    return _read("imagenet_classnames.txt")


def imagenet_templates() -> tuple[str, ...]:
    """The 80 OpenAI CLIP ImageNet prompt templates, `{}` standing for the class name."""
    return _read("imagenet_templates.txt")


def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k WordNet ids, sorted (n01440764 ... n15075141): class index order."""
    return _read("imagenet_wnids.txt")
