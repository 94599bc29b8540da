"""Text tower: a transformers encoder (pretrained by name/path, or built from a config) plus pooling.

From-scratch towers for well-known hub names (e.g. `distilbert-base-uncased`) are built from the
architecture's config class locally, so CPU runs never need the hub; `text_config` overrides its fields
and the tokenizer decides `vocab_size` and `pad_token_id`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from clipctl.data.text import trim_padding
from clipctl.errors import UsageError
from clipctl.model.config import ModelConfig
from clipctl.model.util import first_line

# Hub names whose architecture is built offline: model type + the fields where that model's published
# config.json differs from the config class defaults (vocab size and pad id come from the tokenizer).
KNOWN_ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "distilbert-base-uncased": ("distilbert", {}),
    "distilbert-base-cased": ("distilbert", {}),
    "bert-base-uncased": ("bert", {}),
    "bert-base-cased": ("bert", {}),
    "bert-large-uncased": (
        "bert",
        dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    ),
    "roberta-base": (
        "roberta",
        dict(max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2),
    ),
}
# Organisations the hub moved those names under; "distilbert/distilbert-base-uncased" is the same model.
_CANONICAL_ORGS = ("distilbert/", "google-bert/", "FacebookAI/")


class TextTower(nn.Module):
    """Encoder + pooling; the attention mask is `token_ids != pad_id`, so callers pass ids only."""

    def __init__(self, encoder: PreTrainedModel, pad_id: int, pooling: str) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise UsageError(f"model.text_pooling = '{pooling}' is not supported; use 'cls' or 'mean'")
        if getattr(encoder, "pooler", None) is not None:
            # BERT-style pooler heads are unused here (pooling is ours); left in, their parameters would get
            # no gradient, which DDP rejects, and weight decay would still shrink them.
            encoder.pooler = None
        self.encoder = encoder
        self.pad_id = pad_id
        self.pooling = pooling
        self.width: int = encoder.config.hidden_size

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        if token_ids.device.type == "cpu":  # free here; callers on an accelerator trim on the host first
            token_ids = trim_padding(token_ids, self.pad_id)
        mask = token_ids != self.pad_id
        hidden = self.encoder(input_ids=token_ids, attention_mask=mask.long()).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def enable_grad_checkpointing(self) -> None:
        """Activation checkpointing of the encoder layers (non-reentrant, so inputs need no grad)."""
        if not self.encoder.supports_gradient_checkpointing:
            raise UsageError(
                f"model.grad_checkpointing = true: text model '{type(self.encoder).__name__}' does not support "
                "it; set model.grad_checkpointing = false"
            )
        kwargs = {"use_reentrant": False}
        if hasattr(self.encoder, "activation_checkpointing_enable"):  # the transformers 5 name
            self.encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    @property
    def grad_checkpointing(self) -> bool:
        """Whether any encoder layer checkpoints its activations (the flag lives on submodules)."""
        return any(getattr(m, "gradient_checkpointing", False) for m in self.encoder.modules())


def build_text_tower(
    cfg: ModelConfig, vocab_size: int, pad_id: int, load_weights: bool = True, max_len: int | None = None
) -> TextTower:
    """The text tower of `cfg`; pretrained weights only when `text_pretrained` and `load_weights`."""
    if cfg.text_pretrained and load_weights:
        encoder = _pretrained_encoder(cfg)
        if vocab_size > encoder.config.vocab_size:
            raise UsageError(
                f"model.tokenizer = '{cfg.tokenizer}' has {vocab_size} tokens but pretrained text model "
                f"'{cfg.text_model}' embeds only {encoder.config.vocab_size}; use model.tokenizer = \"auto\""
            )
    else:
        config = scratch_text_config(cfg, vocab_size, pad_id)
        try:
            encoder = AutoModel.from_config(config)
        except (ValueError, TypeError, AssertionError) as err:  # inconsistent sizes, e.g. dim % n_heads != 0
            raise UsageError(
                f"model.text_config = {cfg.text_config} gives an invalid {config.model_type} ({first_line(err)}); "
                "fix the sizes"
            ) from err
    if getattr(encoder.config, "is_encoder_decoder", False):
        raise UsageError(
            f"model.text_model = '{cfg.text_model}' is an encoder-decoder; use an encoder such as "
            "distilbert-base-uncased"
        )
    positions = getattr(encoder.config, "max_position_embeddings", None)
    if max_len is not None and positions is not None and positions < max_len:
        raise UsageError(
            f"data.max_text_len = {max_len} exceeds the text model's max_position_embeddings = {positions}; "
            "lower data.max_text_len or raise model.text_config.max_position_embeddings"
        )
    return TextTower(encoder, pad_id, cfg.text_pooling)


def scratch_text_config(cfg: ModelConfig, vocab_size: int, pad_id: int) -> PretrainedConfig:
    """Config for a from-scratch tower: local folder, known hub name, bare model type, else the hub/cache."""
    name = cfg.text_model
    short = next((name[len(org) :] for org in _CANONICAL_ORGS if name.startswith(org)), name)
    if Path(name).expanduser().is_dir():
        config = _hub_config(name)
    elif short in KNOWN_ARCHITECTURES:
        model_type, fields = KNOWN_ARCHITECTURES[short]
        config = CONFIG_MAPPING[model_type](**fields)
    elif name in CONFIG_MAPPING:
        config = CONFIG_MAPPING[name]()
    else:
        config = _hub_config(name)
    for key, value in cfg.text_config.items():
        if not hasattr(config, key):
            raise UsageError(
                f"model.text_config.{key} is not a field of {type(config).__name__}; "
                f"check the name against the {config.model_type} config documentation"
            )
        setattr(config, key, value)
    config.vocab_size = vocab_size
    config.pad_token_id = pad_id
    return config


def _hub_config(name: str) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        known = ", ".join(sorted(KNOWN_ARCHITECTURES))
        raise UsageError(
            f"model.text_model = '{name}': its config could not be loaded ({first_line(err)}); for a from-scratch "
            f"tower use a known name ({known}), a model type such as 'bert', or a local folder"
        ) from err


def _pretrained_encoder(cfg: ModelConfig) -> PreTrainedModel:
    if cfg.text_model.startswith((".", "/", "~")) and not Path(cfg.text_model).expanduser().is_dir():
        raise UsageError(
            f"model.text_model = '{cfg.text_model}': no such folder; give a folder with the model files "
            "(config.json + weights) or a hub name"
        )
    try:
        return AutoModel.from_pretrained(cfg.text_model, **cfg.text_config)
    except OSError as err:  # offline, not cached, gated, no such repo or folder
        raise UsageError(
            f"model.text_model = '{cfg.text_model}': pretrained weights could not be loaded ({first_line(err)}); "
            "put them in the local Hugging Face cache or set model.text_model to a local folder with the model "
            "files, or set model.text_pretrained = false to train from scratch"
        ) from err
    except pickle.UnpicklingError:  # transformers loads .bin weights with weights_only=True
        raise UsageError(
            f"model.text_model = '{cfg.text_model}': its weights file holds objects beyond tensors (code, or a "
            "corrupt file) and was refused; use a safetensors copy of the weights or a trusted folder"
        ) from None
    except (ValueError, RuntimeError, TypeError) as err:  # unknown model type, text_config not fitting the weights
        raise UsageError(
            f"model.text_model = '{cfg.text_model}' could not be loaded with model.text_config = {cfg.text_config} "
            f"({first_line(err)}); check both keys"
        ) from err
