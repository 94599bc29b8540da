"""Independent float64 transcription of specs/losses.md for the loss tests (no clipctl code inside).

Gradients are checked against autograd of objectives written here: the TRUE objectives (exact g) at
epoch 0 and, at later steps, the objective whose gradient the spec prescribes (g replaced by the
tracked s·e^b, everything forming a weight held constant).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def normalized(gen: torch.Generator, rows: int, dim: int, spread: float = 1.0) -> torch.Tensor:
    """Random unit vectors; `spread` < 1 pulls them together (larger similarities, larger shifts)."""
    base = torch.randn(dim, generator=gen, dtype=torch.float64)
    return F.normalize(base + spread * torch.randn(rows, dim, generator=gen, dtype=torch.float64), dim=1)


def offdiag(n: int) -> torch.Tensor:
    return ~torch.eye(n, dtype=torch.bool)


def h_rows(S: torch.Tensor) -> torch.Tensor:
    """h_ij = S_ij − S_ii for the anchors in the rows of S."""
    return S - S.diagonal().unsqueeze(1)


def true_g(H: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """g_i(τ_i) = (1/(B−1)) Σ_{j≠i} exp(h_ij/τ_i), unshifted (fine in float64 for |h| ≤ 2, τ ≥ 0.005)."""
    B = H.shape[0]
    return (torch.exp(H / tau.unsqueeze(1)) * offdiag(B)).sum(1) / (B - 1)


def gamma_ref(epoch: int, schedule: str, gamma: float, gamma_min: float, E: int) -> float:
    if epoch == 0:
        return 1.0
    if schedule == "constant":
        return gamma
    return gamma_min if epoch >= E else gamma_min + 0.5 * (1 - gamma_min) * (1 + math.cos(math.pi * epoch / E))


def shift_and_average(H: torch.Tensor, tau: torch.Tensor, s_old, b_old, gamma: float):
    """Spec steps 1-4 for one side: returns (s, b) after the update, as plain loops over anchors."""
    B = H.shape[0]
    s_new, b_new = s_old.clone(), b_old.clone()
    for i in range(B):
        z = [(H[i, j] / tau[i]).item() if j != i else 0.0 for j in range(B)]
        b = max(b_old[i].item(), max(z))
        ghat = sum(math.exp(z[j] - b) for j in range(B) if j != i) / (B - 1)
        s_new[i] = (1 - gamma) * s_old[i].item() * math.exp(b_old[i].item() - b) + gamma * ghat
        b_new[i] = b
    return s_new, b_new


def linearized_objective(
    H: torch.Tensor, tau: torch.Tensor, s: torch.Tensor, b: torch.Tensor, eps: float
) -> torch.Tensor:
    """mean_i τ_i·(1/(B−1)) Σ_j exp(h_ij/τ_i − b_i)/(s_i+ε): its gradient is mean_i mean_j w_ij ∇h_ij."""
    B = H.shape[0]
    e = torch.exp(H / tau.unsqueeze(1) - b.unsqueeze(1)) * offdiag(B)
    return (tau * e.sum(1) / (B - 1) / (s + eps)).mean()


def tau_gradient(
    H: torch.Tensor, tau: torch.Tensor, s: torch.Tensor, b: torch.Tensor, rho: float, eps: float
) -> torch.Tensor:
    """∂/∂τ_i [τ_i(log g_i(τ_i) + ρ)] with g replaced by s·e^b: log(s+ε) + b + ρ + τ·g'(τ)·e^{−b}/(s+ε),
    g' by autograd of the exact batch g."""
    tau_leaf = tau.detach().clone().requires_grad_(True)
    (dg,) = torch.autograd.grad(true_g(H.detach(), tau_leaf).sum(), tau_leaf)
    return torch.log(s + eps) + b + rho + tau * dg * torch.exp(-b) / (s + eps)


def isogclr_new_v2_objective(
    S: torch.Tensor, tau_I: torch.Tensor, tau_T: torch.Tensor, rho: float, lam: float
) -> torch.Tensor:
    """F of specs/losses.md `isogclr_new_v2`, transcribed as written (the course's iSogCLR_New_v2):

    F = mean_i [τ_I,i log mean_{j≠i} e^{S_ij/τ_I,i} + τ_T,i log mean_{j≠i} e^{S_ji/τ_T,i} + ρ(τ_I,i + τ_T,i)]
        + λ log mean_i e^{−2 S_ii/λ}
    The negatives are contrasted on RAW similarities; the positive pair appears only in the last term.
    """
    B = S.shape[0]
    mask = offdiag(B)
    log_mean_neg = math.log(B - 1)

    def side(M: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        logits = (M / tau.unsqueeze(1)).masked_fill(~mask, -math.inf)
        return tau * (torch.logsumexp(logits, dim=1) - log_mean_neg)

    negatives = side(S, tau_I) + side(S.T, tau_T) + rho * (tau_I + tau_T)
    dro = lam * (torch.logsumexp(-2.0 * S.diagonal() / lam, dim=0) - math.log(B))
    return negatives.mean() + dro
