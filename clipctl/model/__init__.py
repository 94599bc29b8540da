"""CLIP model: timm image tower (`image`), transformers text tower (`text`), projections and the CLIP module
(`clip`), and the recipe's [model] section (`config`). Import the submodule you need: this package face stays
empty so that reading a recipe does not import torch."""
