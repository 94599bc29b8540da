"""The loss registry: a loss is its config model (the `[loss]` keys it reads) plus its class.

    register_loss(MyConfig, MyLoss)     # MyConfig.name: Literal["mine"]; MyLoss(ContrastiveLoss)

Names, defaults and "which loss reads which key" all come from the registered models, in registration
order. Built-in classes are registered by import path and imported when first built, so that reading a
recipe never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from clipctl.errors import UsageError
from clipctl.losses.config import (
    REMOVED_KEYS,
    CLIPConfig,
    CyCLIPConfig,
    DCLConfig,
    FastCLIPv3Config,
    ISogCLRConfig,
    ISogCLRNewConfig,
    ISogCLRNewV2Config,
    LossConfig,
    SigLIPConfig,
    SogCLRConfig,
)
from clipctl.schema import format_validation_error, tagged_union

DEFAULT_LOSS = "sogclr"

_LOSSES: dict[str, tuple[type[LossConfig], type | str]] = {}  # name -> (config model, class or "module:Class")


def register_loss(config: type[LossConfig], loss: type | str) -> None:
    """Make a loss available to recipes and `build_loss`; its name is the default of `config.name`."""
    name = config.model_fields["name"].default
    if not isinstance(name, str) or not name:
        raise TypeError(f"{config.__name__}.name needs a default: the loss name, e.g. name: Literal['mine'] = 'mine'")
    _LOSSES[name] = (config, loss)


def loss_names() -> tuple[str, ...]:
    return tuple(_LOSSES)


def loss_configs() -> dict[str, type[LossConfig]]:
    return {name: config for name, (config, _) in _LOSSES.items()}


def loss_class(name: str) -> type:
    """The class of a registered loss (built-ins are imported here, on first use)."""
    _, loss = _LOSSES[name]
    if isinstance(loss, str):
        module, _, attr = loss.partition(":")
        loss = getattr(importlib.import_module(module), attr)
    return loss


def key_users() -> dict[str, tuple[str, ...]]:
    """Which losses read each `[loss]` key (`name` is read by all and not listed)."""
    users: dict[str, tuple[str, ...]] = {}
    for name, config in loss_configs().items():
        for key in config.model_fields:
            if key != "name":
                users[key] = users.get(key, ()) + (name,)
    return users


LossSection = tagged_union(LossConfig, loss_configs, tag="name", default=DEFAULT_LOSS)
_ADAPTER: TypeAdapter[LossConfig] = TypeAdapter(LossSection)


def default_loss_config() -> LossConfig:
    return loss_configs()[DEFAULT_LOSS]()


def check_loss_keys(source: str, raw: dict[str, Any], explicit: set[str] | None = None) -> None:
    """Reject loss keys the chosen loss does not read; `explicit` limits the check to keys the user wrote
    in this file or on the command line (keys inherited through `extends` from another loss are dropped)."""
    loss = raw.get("loss")
    if not isinstance(loss, dict):
        return
    name = loss.get("name", DEFAULT_LOSS)
    if not isinstance(name, str) or name not in _LOSSES:
        return  # the schema reports the bad name with the valid ones
    users_of = key_users()
    inherited = set()
    for key in loss:
        if key in REMOVED_KEYS:
            if explicit is None or key in explicit:
                raise UsageError(f"{source}: loss.{key}: {REMOVED_KEYS[key]}")
            inherited.add(key)
            continue
        users = users_of.get(key)
        if users is None or name in users:
            continue
        if explicit is not None and key not in explicit:
            inherited.add(key)
            continue
        raise UsageError(
            f"{source}: loss.{key}: not used by loss {name!r} (used by {', '.join(users)}); "
            f"remove it or change loss.name"
        )
    raw["loss"] = {k: v for k, v in loss.items() if k not in inherited}


def parse_loss_config(table: Mapping[str, Any], source: str = "loss_config") -> LossConfig:
    """A `[loss]` table as its loss's model; a key the chosen loss does not read is an error, as in a recipe."""
    check_loss_keys(source, {"loss": dict(table)})
    try:
        return _ADAPTER.validate_python(dict(table))
    except ValidationError as err:
        known = list(dict.fromkeys(key for config in loss_configs().values() for key in config.model_fields))
        raise UsageError(
            format_validation_error(f"{source}: loss", err, known).replace(": loss: ", ": loss.", 1)
        ) from None


def build_loss(
    loss_config: LossConfig | Mapping[str, Any],
    num_samples: int,
    *,
    total_epochs: int | None = None,
    embed_dim: int | None = None,
) -> Any:
    """The loss named by `loss_config` (the recipe's [loss] table as a dict, or its model).

    `total_epochs` is the run length for η schedules `cosine`/`exp` (or call `set_total_epochs`);
    `embed_dim` is required by `isogclr_new` with `temp_net = true`.
    """
    if isinstance(loss_config, LossConfig):
        cfg = loss_config
    elif isinstance(loss_config, Mapping):
        cfg = parse_loss_config(loss_config, "build_loss")
    else:
        raise UsageError(
            f"build_loss: expected a LossConfig or a dict of [loss] keys, got {type(loss_config).__name__}"
        )
    return loss_class(cfg.name)(cfg, num_samples, total_epochs=total_epochs, embed_dim=embed_dim)


register_loss(CLIPConfig, "clipctl.losses.clip:CLIPLoss")
register_loss(SogCLRConfig, "clipctl.losses.sogclr:SogCLRLoss")
register_loss(ISogCLRConfig, "clipctl.losses.isogclr:ISogCLRLoss")
register_loss(ISogCLRNewConfig, "clipctl.losses.isogclr:ISogCLRNewLoss")
register_loss(ISogCLRNewV2Config, "clipctl.losses.isogclr:ISogCLRNewV2Loss")
register_loss(FastCLIPv3Config, "clipctl.losses.fastclip:FastCLIPv3Loss")
register_loss(SigLIPConfig, "clipctl.losses.siglip:SigLIPLoss")
register_loss(DCLConfig, "clipctl.losses.dcl:DCLLoss")
register_loss(CyCLIPConfig, "clipctl.losses.cyclip:CyCLIPLoss")
