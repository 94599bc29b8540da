"""The `[loss]` table: one model per loss, holding exactly the keys that loss reads (specs/losses.md).

These models import no torch, so reading a recipe (every command does) stays fast; the loss classes that
consume them live in the family modules (`clip`, `sogclr`, `isogclr`, `fastclip`, `siglip`, `dcl`, `cyclip`).
Which loss reads a key is the model's own field list: `registry.key_users()` derives the "used by" table from
these models.
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
    "bias_init",
    "lambda_in_modal",
    "lambda_cross_modal",
    "gamma",
    "gamma_schedule",
    "gamma_min",
    "gamma_decay_epochs",
    "eps",  # removed (REMOVED_KEYS); kept here so a recipe can be written as earlier releases wrote it
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


def write_rank(key: str) -> int:
    """Where `key` goes in a resolved recipe's [loss] table (keys not in WRITE_ORDER follow, in model order)."""
    return _RANK.get(key, len(_RANK))


# Keys that once existed, with why they went: a recipe that sets one is refused naming the change; a recipe stored
# by an older clipctl (a run's recipe.toml, a checkpoint's embedded recipe) has it dropped, since it held a default.
REMOVED_KEYS = {
    "eps": "removed: the global losses keep their moving estimate in the log domain, which needs no epsilon "
    "(specs/losses.md); delete the key",
}


CLIP_TAU_BOX = (0.01, 1.0)  # where clip's learnable τ lives: θ = log(1/τ) ∈ [0, ln 100]


class LossConfig(Section):
    """Base of every loss's model; `name` picks the model and the loss class (see `registry`)."""

    name: str

    @model_serializer(mode="wrap")
    def _written_order(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return dict(sorted(data.items(), key=lambda item: write_rank(item[0])))

    def fill_optim_defaults(self, lr: float) -> None:
        """Set keys whose default follows `optim.lr` (called once the whole recipe is read)."""

    def warnings(self, contrast_batch: int) -> list[str]:
        """Valid settings that defeat their purpose at this contrast batch size; one line each."""
        return []

    def removed_defaults(self) -> dict[str, Any]:
        """Keys of REMOVED_KEYS this loss had, at the value earlier releases wrote into every resolved recipe."""
        return {}


def _outside_tau_box(loss: str, temperature: float) -> str | None:
    """Why a learnable start is refused: it is clamped into [0.01, 1] after every step, so a start outside would
    be moved there silently."""
    if CLIP_TAU_BOX[0] <= temperature <= CLIP_TAU_BOX[1]:
        return None
    return (
        f"temperature = {temperature:g} is outside the learnable box [{CLIP_TAU_BOX[0]:g}, {CLIP_TAU_BOX[1]:g}] "
        f"of {loss} (θ = log(1/τ) is clamped to [0, ln 100]); start inside it"
    )


class CLIPConfig(LossConfig):
    name: Literal["clip"] = "clip"
    temperature: float = Field(0.01, gt=0, le=10)
    learnable_temp: bool = False
    lr_tau: float | None = Field(None, gt=0)  # None: optim.lr

    @model_validator(mode="after")
    def _check_learnable_start(self) -> CLIPConfig:
        problem = _outside_tau_box(self.name, self.temperature) if self.learnable_temp else None
        if problem:
            raise ValueError(f"{problem}, or set learnable_temp = false")
        return self

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

    def removed_defaults(self) -> dict[str, Any]:
        return {"eps": 1e-8}


class SogCLRConfig(GCLConfig):
    name: Literal["sogclr"] = "sogclr"
    temperature: float = Field(0.01, gt=0, le=10)


class _TauBox(GCLConfig):
    """Losses whose temperatures live in a box [tau_min, tau_max] and are moved by the robust objective's ρ."""

    tau_min: float = Field(0.005, gt=0, le=10)
    tau_max: float = Field(0.05, gt=0, le=10)
    rho_I: float = Field(8.0, ge=0, le=100)
    rho_T: float = Field(8.0, ge=0, le=100)

    @model_validator(mode="after")
    def _check_box(self) -> _TauBox:
        if self.tau_min > self.tau_max:
            raise ValueError(f"tau_min ({self.tau_min}) must not exceed tau_max ({self.tau_max})")
        return self

    def _rhos(self) -> dict[str, float]:
        """The ρ values that set the sign of a τ-gradient, by the name a user sets them under."""
        return {"loss.rho_I": self.rho_I, "loss.rho_T": self.rho_T}

    def _moved(self) -> str:
        return f"every temperature of {self.name}"

    def warnings(self, contrast_batch: int) -> list[str]:
        """On a fresh estimate an anchor's τ-slope is H(p_i) − log(B−1) (H, the entropy of its softmax over the B−1
        negatives, is ≥ 0), so its τ-gradient is ≥ ρ − log(B−1): with ρ ≥ log(B−1) every τ can only fall, whatever
        the data; a stale moving estimate lets a few step the other way now and then."""
        bound = math.log(max(contrast_batch - 1, 1))
        high = [f"{key} = {value:g}" for key, value in self._rhos().items() if value >= bound]
        if not high:
            return []
        return [
            f"{' and '.join(high)} >= log(B-1) = {bound:.2f} for the contrast batch B = {contrast_batch} "
            "(train.batch_size / "
            f"train.grad_accum): every τ-gradient on a fresh estimate is positive, so {self._moved()} can only "
            f"fall (a stale estimate lets a few rise now and then); use rho < {bound:.2f} for temperatures that can "
            "also rise"
        ]


class IndividualTempConfig(_TauBox):
    """The iSogCLR family: one τ per sample and side, moved by momentum SGD on its τ-gradient."""

    tau_init: float = Field(0.01, gt=0, le=10)
    eta_init: float = Field(0.03, ge=0, le=10)
    eta_schedule: Literal["const", "cosine", "exp"] = "const"
    beta_u: float = Field(0.9, gt=0, le=1)
    tau_grad_clip: float = Field(5.0, ge=0)


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
    """One learnable global τ in [tau_min, tau_max] = [0.01, 1] by default, starting at `temperature`.

    ρ = (rho_I + rho_T)/2 defaults to 4.0: on a fresh estimate dF/dτ ≥ 2(ρ − log(B−1)), so τ can rise only below
    log(B−1), and clipctl's recipes train at B = 128 (log 127 = 4.84, a margin of 0.84 in the mean entropy of the
    negatives' softmax). FastCLIP's own runs use ρ ≈ 6.5 at B = 1024 (margin 0.43); set that for such batches.
    """

    name: Literal["fastclip_v3"] = "fastclip_v3"
    temperature: float = Field(0.01, gt=0, le=10)
    tau_min: float = Field(0.01, gt=0, le=10)
    tau_max: float = Field(1.0, gt=0, le=10)
    rho_I: float = Field(4.0, ge=0, le=100)
    rho_T: float = Field(4.0, ge=0, le=100)
    lr_tau: float | None = Field(None, gt=0)  # None: optim.lr

    def fill_optim_defaults(self, lr: float) -> None:
        if self.lr_tau is None:
            object.__setattr__(self, "lr_tau", lr)

    def _rhos(self) -> dict[str, float]:
        return {"(loss.rho_I + loss.rho_T)/2": 0.5 * (self.rho_I + self.rho_T)}

    def _moved(self) -> str:
        return "the global temperature of fastclip_v3"


class SigLIPConfig(LossConfig):
    """The pairwise sigmoid loss; its logit scale e^{t'} = 1/τ and bias b are always learned.

    The paper's start t' = log 10, b = −10 is `temperature = 0.1` (τ = e^{−t'}, as for every clipctl loss) and
    `bias_init = -10`. t' and b share one optimizer group (`lr_tau`, default `optim.lr`, no weight decay), as the
    paper trains both with the model's optimizer at one learning rate.
    """

    name: Literal["siglip"] = "siglip"
    temperature: float = Field(0.1, gt=0, le=10)
    bias_init: float = Field(-10.0, ge=-100, le=100)
    lr_tau: float | None = Field(None, gt=0)  # None: optim.lr

    @model_validator(mode="after")
    def _check_start(self) -> SigLIPConfig:
        problem = _outside_tau_box(self.name, self.temperature)
        if problem:
            raise ValueError(problem)
        return self

    def fill_optim_defaults(self, lr: float) -> None:
        if self.lr_tau is None:
            object.__setattr__(self, "lr_tau", lr)


class DCLConfig(LossConfig):
    """The decoupled contrastive loss: InfoNCE without the positive in the denominator, one fixed τ."""

    name: Literal["dcl"] = "dcl"
    temperature: float = Field(0.01, gt=0, le=10)


class CyCLIPConfig(CLIPConfig):
    """`clip` (fixed or learnable τ) plus CyCLIP's consistency regularisers; the paper's weights are 0.25 each."""

    name: Literal["cyclip"] = "cyclip"
    lambda_in_modal: float = Field(0.25, ge=0, le=100)
    lambda_cross_modal: float = Field(0.25, ge=0, le=100)
