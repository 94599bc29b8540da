"""Independent float64 transcription of specs/losses.md for the loss tests (no clipctl code inside).

Gradients are checked against autograd of objectives written here: the TRUE objectives (exact g) at
epoch 0 and, at later steps, the objective whose gradient the spec prescribes (g replaced by the
tracked u, everything forming a weight held constant). The estimate u is kept in the LINEAR domain in float64
(exp(±400) is still finite there), so nothing here shares the implementation's log-domain arithmetic.
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
    """g_i(τ_i) = (1/(B−1)) Σ_{j≠i} exp(h_ij/τ_i), unshifted (finite in float64 for |h| ≤ 2, τ ≥ 0.005)."""
    B = H.shape[0]
    return (torch.exp(H / tau.unsqueeze(1)) * offdiag(B)).sum(1) / (B - 1)


def gamma_ref(epoch: int, schedule: str, gamma: float, gamma_min: float, E: int) -> float:
    if epoch == 0:
        return 1.0
    if schedule == "constant":
        return gamma
    return gamma_min if epoch >= E else gamma_min + 0.5 * (1 - gamma_min) * (1 + math.cos(math.pi * epoch / E))


def moving_estimate(u_old: torch.Tensor, ghat: torch.Tensor, gamma: float) -> torch.Tensor:
    """u ← (1−γ)·u + γ·ĝ in the linear domain, float64; an unvisited sample (u = 0) takes ĝ whole."""
    return torch.where(u_old > 0, (1 - gamma) * u_old + gamma * ghat, ghat)


def stored(u: torch.Tensor) -> torch.Tensor:
    """What a float32 buffer of log u gives back: u rounded as the spec stores it (0 stays 0)."""
    return torch.exp(torch.log(u).to(torch.float32).to(torch.float64))


def linearized_objective(H: torch.Tensor, tau: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """mean_i τ_i·g_i(h)/u_i with u held constant: its gradient is mean_i τ_i∇g_i/u_i, the true objective's
    gradient mean_i τ_i∇log g_i with g replaced by the tracked u in the denominator."""
    return (tau * true_g(H, tau) / u).mean()


def tau_gradient(H: torch.Tensor, tau: torch.Tensor, u: torch.Tensor, rho: float) -> torch.Tensor:
    """∂/∂τ_i [τ_i(log g_i(τ_i) + ρ)] with g replaced by u: log u + ρ + τ·g'(τ)/u, g' by autograd of the exact g."""
    tau_leaf = tau.detach().clone().requires_grad_(True)
    (dg,) = torch.autograd.grad(true_g(H.detach(), tau_leaf).sum(), tau_leaf)
    return torch.log(u) + rho + tau * dg / u


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


def separated(gen: torch.Generator, rows: int, gap: float = 0.4, jitter: float = 0.01) -> tuple[torch.Tensor, ...]:
    """Image and text features whose every positive sits about `gap` above every negative (S_ii ≈ 1,
    S_ij ≈ 1 − gap): at τ = 0.01 each anchor's z_ij ≈ −gap/τ = −40, where g ≈ e^{−40}. Built from orthonormal
    directions e_i plus a shared component c·v with 1/(1 + c²) = gap; `jitter` breaks the ties."""
    dim = rows + 1
    c = math.sqrt(1.0 / gap - 1.0)
    base = torch.eye(rows, dim, dtype=torch.float64)
    base[:, rows] = c
    x = F.normalize(base + jitter * torch.randn(rows, dim, generator=gen, dtype=torch.float64), dim=1)
    t = F.normalize(base + jitter * torch.randn(rows, dim, generator=gen, dtype=torch.float64), dim=1)
    return x, t


# ------------------------------------------------------------------------- baselines: SigLIP, DCL, CyCLIP


def siglip_objective(x: torch.Tensor, t: torch.Tensor, t_prime: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Zhai et al. 2023, as written: −(1/|B|) Σ_i Σ_j log 1/(1 + e^{z_ij(−t·x_i·y_j − b)}), t = exp(t'),
    z_ij = 1 for the pair's own text and −1 for every other, |B| the batch size."""
    B = x.shape[0]
    temperature = torch.exp(t_prime)
    total = x.new_zeros(())
    for i in range(B):
        for j in range(B):
            z = 1.0 if i == j else -1.0
            total = total + torch.log(1.0 / (1.0 + torch.exp(z * (-temperature * torch.dot(x[i], t[j]) - b))))
    return -total / B


def dcl_objective(x: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    """Yeh et al. 2022 for image–text pairs: the InfoNCE ratio with the positive removed from the denominator,
    −log(e^{⟨x_i,t_i⟩/τ} / Σ_{j≠i} e^{⟨x_i,t_j⟩/τ}) for every image anchor and likewise for every text anchor,
    averaged over the anchors of each side and summed over the two sides. Plain exponentials (finite in float64
    for |S|/τ ≤ 200)."""
    B = x.shape[0]
    E = torch.exp(x @ t.T / tau)
    image = [-torch.log(E[i, i] / sum(E[i, j] for j in range(B) if j != i)) for i in range(B)]
    text = [-torch.log(E[i, i] / sum(E[j, i] for j in range(B) if j != i)) for i in range(B)]
    return torch.stack(image).mean() + torch.stack(text).mean()


def cyclip_objective(
    x: torch.Tensor, t: torch.Tensor, tau: torch.Tensor, lam_in: float, lam_cross: float
) -> torch.Tensor:
    """Goel et al. 2022: L_CLIP + λ₁·L_in + λ₂·L_cross with
    L_CLIP = −(1/2N) Σ_j log(e^{⟨I_j,T_j⟩/τ} / Σ_k e^{⟨I_j,T_k⟩/τ})
             − (1/2N) Σ_k log(e^{⟨I_k,T_k⟩/τ} / Σ_j e^{⟨I_j,T_k⟩/τ}),
    L_in = (1/N) Σ_j Σ_k (⟨I_j,I_k⟩ − ⟨T_j,T_k⟩)², L_cross = (1/N) Σ_j Σ_k (⟨I_j,T_k⟩ − ⟨I_k,T_j⟩)²
    (1/N times the sum over the N² pairs: the authors' code takes the mean over them times the batch size N)."""
    N = x.shape[0]
    E = torch.exp(x @ t.T / tau)
    image = sum(torch.log(E[j, j] / E[j].sum()) for j in range(N))
    text = sum(torch.log(E[k, k] / E[:, k].sum()) for k in range(N))
    clip = -(image + text) / (2 * N)
    pairs = [(j, k) for j in range(N) for k in range(N)]
    in_modal = sum((torch.dot(x[j], x[k]) - torch.dot(t[j], t[k])) ** 2 for j, k in pairs) / N
    cross_modal = sum((torch.dot(x[j], t[k]) - torch.dot(x[k], t[j])) ** 2 for j, k in pairs) / N
    return clip + lam_in * in_modal + lam_cross * cross_modal
