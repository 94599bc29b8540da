"""The `[loss]` table: one model per loss, holding exactly the keys that loss reads (specs/losses.md).

These models import no torch, so reading a recipe (every command does) stays fast; the loss classes that
consume them live in the family modules (`clip`, `sogclr`, `isogclr`, `fastclip`). Which loss reads a key
is the model's own field list: `registry.key_users()` derives the "used by" table from these models.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_serializer, model_validator

from clipctl.schema import Section

# The order keys are written in a resolved recipe. It is part of the file format: a run's recipe sha256 (meta.json)
# and a tuning study's base_sha256 hash that text. Keys not listed follow in their model's order.
WRITE_ORDER = (
    "name",
    "temperature",
    "learnable_temp",
    "gamma",
    "gamma_schedule",
    "gamma_min",
    "gamma_decay_epochs",
    "tau_init",
    "tau_min",
    "tau_max",
    "rho_I",
    "rho_T",
    "eta_init",
    "eta_schedule",
    "beta_u",
    "tau_grad_clip",
    "temp_net",
    "temp_net_prototypes",
    "lr_temp_net",
    "wd_temp_net",
    "dro_lambda",
    "lr_tau",
    "state_device",
)
_RANK = {key: i for i, key in enumerate(WRITE_ORDER)}

# Keys that once existed, with why they went: a recipe that sets one is refused naming the change; a recipe stored
# by an older clipctl (a run's recipe.toml, a checkpoint's embedded recipe) has it dropped, since it held a default.
REMOVED_KEYS = {
    "eps": "removed: the global losses keep their moving estimate in the log domain, which needs no epsilon "
    "(specs/losses.md); delete the key",
}


class LossConfig(Section):
    """Base of every loss's model; `name` picks the model and the loss class (see `registry`)."""

    name: str

    @model_serializer(mode="wrap")
    def _written_order(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return dict(sorted(data.items(), key=lambda item: _RANK.get(item[0], len(_RANK))))

    def fill_optim_defaults(self, lr: float) -> None:
        """Set keys whose default follows `optim.lr` (called once the whole recipe is read)."""

    def warnings(self, contrast_batch: int) -> list[str]:
        """Valid settings that defeat their purpose at this contrast batch size; one line each."""
        return []


class CLIPConfig(LossConfig):
    name: Literal["clip"] = "clip"
    temperature: float = Field(0.01, gt=0, le=10)
    learnable_temp: bool = False
    lr_tau: float | None = Field(None, gt=0)  # None: optim.lr

    def fill_optim_defaults(self, lr: float) -> None:
        if self.lr_tau is None:
            object.__setattr__(self, "lr_tau", lr)


class GCLConfig(LossConfig):
    """Keys every global contrastive loss (SogCLR family) reads: the moving average and its state."""

    gamma: float = Field(0.8, gt=0, le=1)
    gamma_schedule: Literal["constant", "cosine"] = "constant"
    gamma_min: float = Field(0.2, gt=0, le=1)
    gamma_decay_epochs: int = Field(15, ge=1)
    state_device: Literal["auto", "cpu"] = "auto"
    state_sharding: Literal["replicated", "sharded"] = Field(
        "replicated",
        description="per-sample state on every rank, or sample i on rank i mod K only (ceil(N/K) rows per rank)",
    )


class SogCLRConfig(GCLConfig):
    name: Literal["sogclr"] = "sogclr"
    temperature: float = Field(0.01, gt=0, le=10)


class _TauBox(GCLConfig):
    """Losses whose temperatures live in a box [tau_min, tau_max]."""

    tau_min: float = Field(0.005, gt=0, le=10)
    tau_max: float = Field(0.05, gt=0, le=10)
    rho_I: float = Field(8.0, ge=0, le=100)
    rho_T: float = Field(8.0, ge=0, le=100)

    @model_validator(mode="after")
    def _check_box(self) -> _TauBox:
        if self.tau_min > self.tau_max:
            raise ValueError(f"tau_min ({self.tau_min}) must not exceed tau_max ({self.tau_max})")
        return self


class IndividualTempConfig(_TauBox):
    """The iSogCLR family: one τ per sample and side, moved by momentum SGD on its τ-gradient."""

    tau_init: float = Field(0.01, gt=0, le=10)
    eta_init: float = Field(0.03, ge=0, le=10)
    eta_schedule: Literal["const", "cosine", "exp"] = "const"
    beta_u: float = Field(0.9, gt=0, le=1)
    tau_grad_clip: float = Field(5.0, ge=0)

    def warnings(self, contrast_batch: int) -> list[str]:
        """On a fresh estimate the τ-gradient is G_i = H(p_i) − log(B−1) + ρ ≥ ρ − log(B−1) (H, the entropy of the
        anchor's softmax over its B−1 negatives, is ≥ 0), so with ρ ≥ log(B−1) every τ can only fall; a stale
        moving estimate lets a few anchors step the other way now and then."""
        bound = math.log(max(contrast_batch - 1, 1))
        high = [f"loss.{key} = {getattr(self, key):g}" for key in ("rho_I", "rho_T") if getattr(self, key) >= bound]
        if not high:
            return []
        return [
            f"{' and '.join(high)} >= log(B-1) = {bound:.2f} for the contrast batch B = {contrast_batch} "
            "(train.batch_size / "
            f"train.grad_accum): every τ-gradient on a fresh estimate is positive, so every temperature of "
            f"{self.name} can only fall (a stale estimate lets a few rise now and then); "
            f"use rho < {bound:.2f} for temperatures that can also rise"
        ]


class ISogCLRConfig(IndividualTempConfig):
    name: Literal["isogclr"] = "isogclr"


class ISogCLRNewConfig(IndividualTempConfig):
    """The course variant: its own η and β defaults, and an optional temperature network."""

    name: Literal["isogclr_new"] = "isogclr_new"
    eta_init: float = Field(1e-5, ge=0, le=10)
    beta_u: float = Field(0.5, gt=0, le=1)
    temp_net: bool = False
    temp_net_prototypes: int = Field(256, ge=1, le=65_536)
    lr_temp_net: float | None = Field(None, gt=0)  # None: optim.lr / 10
    wd_temp_net: float = Field(1e-3, ge=0)

    def fill_optim_defaults(self, lr: float) -> None:
        if self.lr_temp_net is None:
            object.__setattr__(self, "lr_temp_net", lr / 10)


class ISogCLRNewV2Config(IndividualTempConfig):
    """Plus distributionally robust positives; a wider τ box, ρ = 6 and no τ-gradient clip by default."""

    name: Literal["isogclr_new_v2"] = "isogclr_new_v2"
    tau_max: float = Field(1.0, gt=0, le=10)
    rho_I: float = Field(6.0, ge=0, le=100)
    rho_T: float = Field(6.0, ge=0, le=100)
    eta_init: float = Field(0.01, ge=0, le=10)
    tau_grad_clip: float = Field(0.0, ge=0)
    dro_lambda: float = Field(1.0, gt=0)


class FastCLIPv3Config(_TauBox):
    """One learnable global τ in [tau_min, tau_max] = [0.01, 1] by default, starting at `temperature`."""

    name: Literal["fastclip_v3"] = "fastclip_v3"
    temperature: float = Field(0.01, gt=0, le=10)
    tau_min: float = Field(0.01, gt=0, le=10)
    tau_max: float = Field(1.0, gt=0, le=10)
    lr_tau: float | None = Field(None, gt=0)  # None: optim.lr

    def fill_optim_defaults(self, lr: float) -> None:
        if self.lr_tau is None:
            object.__setattr__(self, "lr_tau", lr)
