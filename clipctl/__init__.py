"""clipctl: train, tune, evaluate and compare CLIP-style models with global contrastive losses."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(path: Any, device: Any = "cpu") -> tuple[Any, Any, Any]:
    """`model, tokenizer, preprocess = clipctl.load("runs/<run>")` (or its ckpt.pt, or a folder `clipctl export`
    wrote): plain torch objects with open_clip's `encode_image(images, normalize=False)`,
    `encode_text(tokens, normalize=False)`, `tokenizer(texts)` and `preprocess(pil_image)`; see
    `clipctl.interop.api.load`. Imported on call, so `import clipctl` stays light."""
    from clipctl.interop.api import load as load_model

    return load_model(path, device)
