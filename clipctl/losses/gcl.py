"""Global contrastive losses (SogCLR family): the shared per-step machinery of specs/losses.md.

For one side (image anchors shown; text anchors use the transposed similarities), with h_ij = S_ij − S_ii,
z_ij = h_ij/τ_i (detached) and j over the B−1 negatives, the moving estimate u_i of g_i is kept in the log
domain as ℓ_i = log u_i (−∞ before the first visit):
  log ĝ_i = logsumexp_j z_ij − log(B−1),
  ℓ_i ← logaddexp(log(1−γ) + ℓ_i, log γ + log ĝ_i)   (ℓ_i ← log ĝ_i in epoch 0 and on a first visit),
  w_ij = exp(z_ij − ℓ_i),  surrogate L = mean_i mean_j w_ij·h_ij.
No shift and no ε: every exponent z_ij − ℓ_i is at most log(B−1) − log γ, so nothing overflows, and a weight
that underflows is a true zero (the old shifted form with an additive ε damped well-separated anchors at small
τ; specs/losses.md "Why the log domain").
The surrogate's gradient with respect to the similarity matrix is the constant matrix W' (w_ij off the
diagonal, −Σ_j w_ij on it), so the backward is two matmuls (dX = W'T, dT = W'ᵀX) and autograd never
stores a B×B graph: one B×B buffer is built in place per side and turned into W'.

A loss whose objective contrasts the negatives on RAW similarities (`relative_negatives = False`,
isogclr_new_v2: τ_i log mean_j e^{S_ij/τ_i}) uses z_ij = S_ij/τ_i and leaves the positive entries of W' at
zero: the positive pair gets no pull from this term.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from clipctl.console import warn_once
from clipctl.errors import ResumeError, UsageError
from clipctl.losses import distributed as D
from clipctl.losses.base import Batch, ContrastiveLoss, LossOutput
from clipctl.losses.config import GCLConfig
from clipctl.losses.schedules import gamma_at
from clipctl.losses.state import PerSampleState


@dataclass
class Side:
    """One side's results for the local anchors (all detached)."""

    W: Tensor  # (b, B) scaled ∂L/∂S for these rows
    log_u: Tensor  # updated moving estimate ℓ = log u
    surrogate: Tensor  # (1/(B−1)) Σ_j w_ij h_ij (raw form: S_ij): this row's surrogate value
    tau_slope: Tensor  # ℓ − (1/(B−1)) Σ_j w_ij z_ij = ∂/∂τ_i [τ_i log g_i] with g replaced by u = e^ℓ
    log_ghat: Tensor  # this step's mini-batch estimate log ĝ


def positives(M: Tensor, offset: int) -> Tensor:
    """View of the positive entries of local rows: row r's positive is column offset + r."""
    return M[:, offset : offset + M.shape[0]].diagonal()


def log_moving_average(log_old: Tensor, log_new: Tensor, gamma: float) -> Tensor:
    """log((1−γ)·e^{log_old} + γ·e^{log_new}), exact at any magnitude; an unvisited entry (−∞) takes log_new.

    γ = 1 (epoch 0) keeps the new estimate only. A first visit takes it whole rather than γ of it: there is
    no old estimate to average with, and γ·ĝ would understate g by the factor γ.
    """
    if gamma >= 1.0:
        return log_new.clone()
    mixed = torch.logaddexp(log_old + math.log1p(-gamma), log_new + math.log(gamma))
    return torch.where(torch.isneginf(log_old), log_new, mixed)


@torch.no_grad()
def contrast_side(
    S: Tensor,
    offset: int,
    tau: Tensor,
    log_u_old: Tensor,
    gamma: float,
    scale: float,
    relative: bool = True,
) -> Side:
    """Batch estimate, moving average and weights for the local rows of S (b×B) in one reused B-wide buffer.

    The buffer holds z (positives at −∞), then w = exp(z − ℓ) in place; `relative` (h = S − S_ii) also puts
    −Σ_j w_ij on the positives, raw (`relative=False`) leaves them at zero.

    The τ-slope ℓ − mean_j w_ij z_ij is formed as ℓ·(1 − mean_j w_ij) − mean_j w_ij log w_ij (z = ℓ + log w):
    both terms of the first form are of size 1/τ and cancel to O(1), which float32 rounds at about 1e-5 at
    τ = 0.01; the second has no such cancellation (on a fresh estimate mean_j w = 1 and it is −mean w log w).
    """
    negatives = S.shape[1] - 1
    inv_tau = tau.reciprocal()
    if relative:
        work = torch.addcmul((-(positives(S, offset) * inv_tau)).unsqueeze(1), S, inv_tau.unsqueeze(1))
    else:
        work = S * inv_tau.unsqueeze(1)
    positives(work, offset).fill_(-math.inf)
    log_ghat = torch.logsumexp(work, dim=1).sub_(math.log(negatives))
    log_u = log_moving_average(log_u_old, log_ghat, gamma)
    work.sub_(log_u.unsqueeze(1)).exp_()  # w; the positives' exp(−∞) = 0
    tau_slope = log_u * -torch.expm1(log_ghat - log_u) - torch.special.xlogy(work, work).sum(dim=1) / negatives
    work.mul_(scale)
    if relative:
        positives(work, offset).copy_(-scale * negatives * torch.exp(log_ghat - log_u))  # −scale · Σ_j w_ij
    surrogate = torch.linalg.vecdot(work, S).div_(scale * negatives)
    return Side(work, log_u, surrogate, tau_slope, log_ghat)


def staleness(log_u_old: Tensor, log_ghat: Tensor) -> Tensor:
    """|ℓ − log ĝ| of the estimate carried into this step, per revisited row; −1 for first visits.

    How far the moving estimate (last refreshed at the previous visit) is from this step's batch estimate:
    large values mean the global estimator averages in badly outdated values.
    """
    visited = torch.isfinite(log_u_old)
    return torch.where(visited, (log_u_old - log_ghat).abs(), torch.full_like(log_ghat, -1.0))


def from_shifted_form(payload: dict[str, Any]) -> dict[str, Any]:
    """Loss state saved before the log domain (columns s_X, b_X; v2's scalars b_pos, r) in today's form.

    u = s·e^b, so ℓ = log s + b, and s = 0 means never visited (ℓ = −∞); the other columns keep their order.
    """
    columns, values = list(payload["columns"]), payload.get("values")
    at = {name: i for i, name in enumerate(columns)}
    names = [f"log_u_{c[2:]}" if c.startswith("s_") else c for c in columns if not c.startswith("b_")]
    converted = None
    if isinstance(values, Tensor):
        rows = values.detach().double()
        parts = []
        for name in columns:
            if name.startswith("s_"):
                s, b = rows[:, at[name]], rows[:, at[f"b_{name[2:]}"]]
                parts.append(torch.where(s > 0, torch.log(s) + b, torch.full_like(s, -math.inf)))
            elif not name.startswith("b_"):
                parts.append(rows[:, at[name]])
        converted = torch.stack(parts, dim=1).float()
    scalars = dict(payload.get("scalars") or {})
    if "r" in scalars and "b_pos" in scalars:
        r, b = float(scalars.pop("r")), float(scalars.pop("b_pos"))
        scalars["log_u_pos"] = torch.tensor(math.log(r) + b if r > 0 else -math.inf)
    return {**payload, "columns": names, "values": converted, "scalars": scalars}


class _SurrogateGradient(torch.autograd.Function):
    """Output `value`; backward as if the output were scale·Σ_k ⟨W_k, L_k R_kᵀ⟩ for triples (W_k, L_k, R_k).

    The value is passed in (the global loss, identical on every rank) and the gradient is given by the
    constant weight matrices: d L_k = W_k R_k, d R_k = W_kᵀ L_k, times `scale` (the world size).
    """

    @staticmethod
    def forward(ctx, value: Tensor, scale: float, *triples: Tensor) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        ctx.save_for_backward(*triples)
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        saved = ctx.saved_tensors
        factor = grad * ctx.scale
        grads: list[Tensor | None] = []
        for k in range(0, len(saved), 3):
            W, left, right = saved[k : k + 3]
            need_left, need_right = ctx.needs_input_grad[2 + k + 1], ctx.needs_input_grad[2 + k + 2]
            grads += [
                None,
                (W @ right).mul_(factor) if need_left else None,
                (W.transpose(0, 1) @ left).mul_(factor) if need_right else None,
            ]
        return (None, None, *grads)


@dataclass
class Step:
    """Everything one forward call computes, handed to the subclass hooks."""

    batch: Batch
    epoch: int
    gamma: float
    old: dict[str, Tensor]
    tau_I: Tensor  # (b,) anchor temperatures as produced (may carry grad: temperature network)
    tau_T: Tensor
    side_I: Side | None = None
    side_T: Side | None = None
    rows: dict[str, Tensor] = field(default_factory=dict)  # per local row; gathered across ranks
    scalars: dict[str, Tensor] = field(default_factory=dict)  # new scalar state (same on every rank)


class Table:
    """The global batch's per-row results: one (B, C) matrix with named columns (one all-gather)."""

    def __init__(self, names: list[str], values: Tensor) -> None:
        self.names, self.values = names, values
        self._at = {n: i for i, n in enumerate(names)}

    def __getitem__(self, name: str) -> Tensor:
        return self.values[:, self._at[name]]

    def __contains__(self, name: str) -> bool:
        return name in self._at

    def select(self, names: tuple[str, ...]) -> Tensor:
        return self.values[:, [self._at[n] for n in names]]


class GlobalContrastiveLoss(ContrastiveLoss):
    """SogCLR machinery with per-anchor temperatures supplied by `_anchor_taus`; subclasses add hooks."""

    state_columns: tuple[str, ...] = ("log_u_I", "log_u_T")
    relative_negatives: bool = True  # negatives contrasted on h = S_ij − S_ii (False: on raw S_ij)

    def __init__(
        self, cfg: GCLConfig, num_samples: int, total_epochs: int | None = None, embed_dim: int | None = None
    ) -> None:
        super().__init__(cfg, num_samples, total_epochs, embed_dim)
        self.state = PerSampleState(
            self.num_samples, self._column_init(), self._scalar_init(), cfg.state_device, cfg.state_sharding
        )

    def _column_init(self) -> dict[str, float]:
        return {name: -math.inf if name.startswith("log_u") else 0.0 for name in self.state_columns}

    def _scalar_init(self) -> dict[str, float]:
        return {}

    def reset_state(self) -> None:
        self.state.reset(self.state.device)

    def gamma_at(self, epoch: int) -> float:
        c = self.cfg
        return gamma_at(epoch, c.gamma_schedule, c.gamma, c.gamma_min, c.gamma_decay_epochs)

    # ------------------------------------------------------------------------------------ hooks

    @abstractmethod
    def _anchor_taus(self, batch: Batch, old: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Per-anchor temperatures (image rows, text columns) used by this step."""

    def _update(self, step: Step) -> None:
        """Add per-row columns (τ updates, τ-gradients) and scalar state to `step`; may edit W."""

    def _extra_loss(self, step: Step, table: Table) -> Tensor | None:
        """A term that trains the loss's own parameters; its value is not added to `out.loss`."""
        return None

    def _extra_stats(self, step: Step, table: Table) -> dict[str, Tensor]:
        return {}

    # ------------------------------------------------------------------------------------ step

    def _compute(self, batch: Batch, epoch: int, step_no: int, with_stats: bool) -> LossOutput:
        device, dtype = batch.x.device, batch.x.dtype
        self.state.place(device)
        # Out-of-range indices are clamped for the read (an accelerator would abort on them) and refused by the
        # guard, in the same transfer as the NaN/inf check, before anything is written.
        in_range = (batch.index_all >= 0) & (batch.index_all < self.num_samples)
        safe_all = batch.index_all.clamp(0, self.num_samples - 1)
        safe = safe_all[batch.offset : batch.offset + batch.index.shape[0]]
        old = self.state.read(safe, safe_all, dtype, device)
        tau_I, tau_T = self._anchor_taus(batch, old)
        step = Step(batch, epoch, self.gamma_at(epoch), old, tau_I, tau_T)
        B, scale = batch.global_size, 1.0 / (batch.global_size * (batch.global_size - 1))
        with torch.no_grad():
            S_I = batch.x.detach() @ batch.t_all.detach().T
            S_T = S_I.T if batch.world == 1 else batch.t.detach() @ batch.x_all.detach().T
            args = (step.gamma, scale, self.relative_negatives)
            step.side_I = contrast_side(S_I, batch.offset, tau_I.detach(), old["log_u_I"], *args)
            step.side_T = contrast_side(S_T, batch.offset, tau_T.detach(), old["log_u_T"], *args)
        step.rows = {
            "loss": (step.side_I.surrogate + step.side_T.surrogate) / B,
            "log_u_I": step.side_I.log_u,
            "used_tau_I": tau_I.detach(),
            "log_u_T": step.side_T.log_u,
            "used_tau_T": tau_T.detach(),
            "stale_I": staleness(old["log_u_I"], step.side_I.log_ghat),
            "stale_T": staleness(old["log_u_T"], step.side_T.log_ghat),
        }
        self._update(step)
        names = list(step.rows)
        table = Table(names, D.all_gather(torch.stack([step.rows[n].detach() for n in names], dim=1)))
        self._guard(table, step.scalars, in_range, batch.index_all, epoch, step_no)
        self.state.write(batch.index_all, table.select(self.state.columns))
        for name, value in step.scalars.items():
            self.state.set_scalar(name, value)

        value = table["loss"].sum()
        if batch.world == 1:
            triples = (step.side_I.W.add_(step.side_T.W.T), batch.x, batch.t)
        else:
            triples = (step.side_I.W, batch.x, batch.t_all, step.side_T.W, batch.t, batch.x_all)
        loss = _SurrogateGradient.apply(value, float(batch.world), *triples)
        extra = self._extra_loss(step, table)
        if extra is not None:
            loss = loss + (extra - extra.detach())
        return LossOutput(loss, self._stats(step, table) if with_stats else {})

    def _guard(
        self, table: Table, scalars: dict[str, Tensor], in_range: Tensor, index: Tensor, epoch: int, step: int
    ) -> None:
        """Indices within the training set and no NaN/inf anywhere in the step's results (loss, s, b, τ, ...),
        checked in one device-to-host transfer: stop before the state is written."""
        finite = torch.isfinite(table.values).all(dim=0)
        parts = [in_range.all().reshape(1), finite]
        if scalars:
            parts.append(torch.stack([torch.isfinite(v).reshape(()) for v in scalars.values()]))
        flags = torch.cat(parts)
        if bool(flags.all()):
            return
        if not bool(flags[0]):
            lo, hi = torch.stack(torch.aminmax(index)).tolist()
            raise UsageError(
                f"loss {self.name}: dataset index out of range [{lo}, {hi}] for num_samples = {self.num_samples}; "
                "build_loss(num_samples=...) must be the training set size"
            )
        names = table.names + list(scalars)
        self._raise_non_finite([n for n, ok in zip(names, flags[1:].tolist()) if not ok], epoch, step)

    def _stats(self, step: Step, table: Table) -> dict[str, float]:
        means = dict(zip(table.names, table.values.mean(dim=0)))
        taus = table.select(("used_tau_I", "used_tau_T"))
        lo, hi = torch.aminmax(taus, dim=0)
        named: dict[str, Tensor] = {}
        for k, side in enumerate(("I", "T")):
            named[f"log_u_{side}"] = means[f"log_u_{side}"]
            named[f"gcl_{side}"] = (taus[:, k] * table[f"log_u_{side}"]).mean()
            named[f"tau_{side}_mean"] = means[f"used_tau_{side}"]
            named[f"tau_{side}_min"] = lo[k]
            named[f"tau_{side}_max"] = hi[k]
            stale = table[f"stale_{side}"]  # median over revisited rows; NaN when the batch has none
            named[f"stale_{side}"] = torch.where(stale >= 0, stale, torch.full_like(stale, math.nan)).nanmedian()
        named.update(self._extra_stats(step, table))
        values = torch.stack([v.detach().reshape(()).to(table.values) for v in named.values()]).tolist()
        stats = dict(zip(named, values))
        stats["gamma"] = step.gamma
        return stats

    # ------------------------------------------------------------------------------ checkpointing

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "format": "clipctl-loss-state",
            "loss": self.name,
            "num_samples": self.num_samples,
            **self.state.payload(),
        }

    def set_extra_state(self, payload: Any) -> None:
        if not isinstance(payload, dict) or payload.get("format") != "clipctl-loss-state":
            raise ResumeError(
                f"loss {self.name}: the checkpoint holds no clipctl loss state; resume from a clipctl state/ directory"
            )
        if "s_I" in payload.get("columns", ()):
            payload = from_shifted_form(payload)
            warn_once(
                f"loss {self.name}: the checkpoint keeps its moving estimate in the old shifted form (s, b, eps); "
                "converted to the log domain (log u = log s + b, s = 0: unvisited)"
            )
        if payload.get("loss") != self.name:
            raise ResumeError(
                f"loss {self.name}: the checkpoint's per-sample state belongs to loss {payload.get('loss')!r}; "
                "resume with the same loss.name"
            )
        problem = self.state.incompatibility(payload)
        if problem is None:
            self.state.load_payload(payload)
        elif getattr(self, "_reset_on_load", False):
            self.state.reset(self.state.device)
        else:
            raise ResumeError(
                f"loss {self.name}: {problem}; resume with the same data and [loss] settings, or set "
                "train.reset_loss_state = true to restart the per-sample state"
            )
