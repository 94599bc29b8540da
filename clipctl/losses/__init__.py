"""Contrastive losses with per-sample state (specs/losses.md).

    from clipctl.losses import build_loss, LOSSES
    loss_fn = build_loss(loss_config, num_samples=N)           # N: training set size
    out = loss_fn(image_features, text_features, index, epoch=e)  # out.loss, out.stats
    loss_fn.state_dict() / loss_fn.load_state_dict(sd, reset=False)

A new loss: a config model (`config.LossConfig` subclass with its own `name`) and a class
(`base.ContrastiveLoss` subclass), made known with one `register_loss(Config, Class)` (`registry`).
This package imports no torch until a loss is built.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from clipctl.losses.registry import build_loss, loss_class, loss_names, parse_loss_config, register_loss


class _LossClasses(Mapping[str, type]):
    """name -> class of every registered loss, for listing; a class is imported when looked up."""

    def __getitem__(self, name: str) -> type:
        if name not in loss_names():
            raise KeyError(name)
        return loss_class(name)

    def __iter__(self) -> Iterator[str]:
        return iter(loss_names())

    def __len__(self) -> int:
        return len(loss_names())


LOSSES: Mapping[str, type] = _LossClasses()

__all__ = ["LOSSES", "build_loss", "parse_loss_config", "register_loss"]
