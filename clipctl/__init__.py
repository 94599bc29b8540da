"""clipctl: train, tune, evaluate and compare CLIP-style models with global contrastive losses."""

__version__ = "0.1.0"
