"""CLIP model: timm image tower + transformers text tower + projections (`build_model`, `CLIPModel`)."""
from clipctl.model.clip import CLIPModel, build_model
from clipctl.model.image import build_image_tower, load_image_checkpoint
from clipctl.model.text import KNOWN_ARCHITECTURES, TextTower, build_text_tower, scratch_text_config

__all__ = [
    "CLIPModel",
    "KNOWN_ARCHITECTURES",
    "TextTower",
    "build_image_tower",
    "build_model",
    "build_text_tower",
    "load_image_checkpoint",
    "scratch_text_config",
]
