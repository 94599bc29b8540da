"""Every loss against autograd of objectives written independently (tests/helpers/losses_reference.py), float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers.losses_reference import (
    gamma_ref,
    h_rows,
    isogclr_new_v2_objective,
    linearized_objective,
    moving_estimate,
    normalized,
    offdiag,
    separated,
    stored,
    tau_gradient,
    true_g,
)

from clipctl.losses import build_loss, parse_loss_config
from clipctl.losses.config import LossConfig

F32 = torch.float32


def close(actual, expected, rtol=1e-6, atol=1e-9, what=""):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        rtol=rtol,
        atol=atol,
        msg=(lambda m: f"{what}: {m}") if what else None,
    )


# ---------------------------------------------------------------------------------------------- clip


def reference_clip(x, t, tau):
    S = x @ t.T / tau
    rows = -S.diagonal() + torch.logsumexp(S, dim=1)
    cols = -S.diagonal() + torch.logsumexp(S, dim=0)
    return 0.5 * (rows.mean() + cols.mean())


@pytest.mark.parametrize("learnable", [False, True])
def test_clip_equals_symmetric_cross_entropy(learnable):
    gen = torch.Generator().manual_seed(1)
    a = normalized(gen, 7, 5).requires_grad_(True)
    c = normalized(gen, 7, 5).requires_grad_(True)
    loss_fn = build_loss({"name": "clip", "temperature": 0.03, "learnable_temp": learnable}, num_samples=7).double()
    out = loss_fn(F.normalize(a, dim=1), F.normalize(c, dim=1), torch.arange(7), epoch=0)
    out.loss.backward()
    theta = torch.tensor(-math.log(0.03), dtype=torch.float64, requires_grad=True)
    a2, c2 = a.detach().clone().requires_grad_(True), c.detach().clone().requires_grad_(True)
    expected = reference_clip(F.normalize(a2, dim=1), F.normalize(c2, dim=1), torch.exp(-theta))
    expected.backward()
    close(out.loss, expected)
    close(a.grad, a2.grad)
    close(c.grad, c2.grad)
    assert out.stats["tau"] == pytest.approx(0.03)
    if learnable:
        close(loss_fn.theta.grad, theta.grad)
        (group,) = loss_fn.param_groups(1e-3)
        assert group["weight_decay"] == 0.0 and group["params"] == [loss_fn.theta] and group["lr"] == 1e-3
        with torch.no_grad():
            loss_fn.theta.fill_(10.0)
        loss_fn.after_optimizer_step()
        assert loss_fn.theta.item() == pytest.approx(math.log(100))
        with torch.no_grad():
            loss_fn.theta.fill_(-1.0)
        loss_fn.after_optimizer_step()
        assert loss_fn.theta.item() == 0.0
    else:
        assert loss_fn.param_groups(1e-3) == [] and not list(loss_fn.parameters())


def test_clip_bf16_inputs_are_computed_in_float32():
    gen = torch.Generator().manual_seed(2)
    x, t = normalized(gen, 6, 4), normalized(gen, 6, 4)
    loss_fn = build_loss({"name": "clip"}, num_samples=6)
    out = loss_fn(x.to(torch.bfloat16), t.to(torch.bfloat16), torch.arange(6))
    assert out.loss.dtype == torch.float32
    close(out.loss, reference_clip(x.to(torch.bfloat16).double(), t.to(torch.bfloat16).double(), 0.01), rtol=1e-5)


# ------------------------------------------------------------------------------------ GCL family


class Simulator:
    """The spec's state recurrences in float64, u in the linear domain, stored as float32 log u like the spec."""

    def __init__(self, cfg: LossConfig, N: int) -> None:
        self.cfg = cfg
        tau0 = getattr(cfg, "tau_init", 0.0)  # only the individual-temperature losses have one
        self.u = {k: torch.zeros(N, dtype=torch.float64) for k in "IT"}
        self.tau = {k: torch.full((N,), tau0, dtype=F32) for k in "IT"}
        self.m = {k: torch.zeros(N, dtype=F32) for k in "IT"}
        self.u_pos = torch.zeros((), dtype=torch.float64)

    def step(self, x, t, idx, epoch, taus):
        """x, t carry grad. Returns (objective with the spec's gradient, loss value, extras)."""
        cfg = self.cfg
        gamma = gamma_ref(epoch, cfg.gamma_schedule, cfg.gamma, cfg.gamma_min, cfg.gamma_decay_epochs)
        S = x @ t.T
        objective = torch.zeros((), dtype=torch.float64)
        value = 0.0
        extras = {"G": {}, "true": torch.zeros((), dtype=torch.float64), "dFdtau_parts": {}}
        B = S.shape[0]
        raw = cfg.name == "isogclr_new_v2"  # negatives on raw similarities: H is S itself, no S_ii
        for side, M in (("I", S), ("T", S.T)):
            H = M if raw else h_rows(M)
            tau = taus[side].detach()
            u = moving_estimate(self.u[side][idx], true_g(H.detach(), tau), gamma)
            objective = objective + linearized_objective(H, tau, u)
            w = torch.exp(H.detach() / tau.unsqueeze(1)) * offdiag(B) / u.unsqueeze(1)
            value += ((w * H.detach()).sum(1) / (B - 1)).mean().item()
            extras["true"] = extras["true"] + (tau * torch.log(true_g(H, tau))).mean()
            self.u[side][idx] = stored(u)
            if cfg.name in ("isogclr", "isogclr_new", "isogclr_new_v2"):
                rho = cfg.rho_I if side == "I" else cfg.rho_T
                G = tau_gradient(H, tau, u, rho)
                if cfg.tau_grad_clip > 0:
                    G = G.clamp(-cfg.tau_grad_clip, cfg.tau_grad_clip)
                extras["G"][side] = G
                if not getattr(cfg, "temp_net", False):
                    m = (1 - cfg.beta_u) * self.m[side][idx].double() + cfg.beta_u * G
                    self.m[side][idx] = m.to(F32)
                    self.tau[side][idx] = (
                        (self.tau[side][idx].double() - cfg.eta_init * m).clamp(cfg.tau_min, cfg.tau_max).to(F32)
                    )
            if cfg.name == "fastclip_v3":
                extras["dFdtau_parts"][side] = tau_gradient(H, tau, u, 0.0)
        if cfg.name == "isogclr_new_v2":
            e = torch.exp(-2.0 * S.diagonal().detach() / cfg.dro_lambda)
            u_pos = moving_estimate(self.u_pos, e.mean(), gamma)
            dro = (-2.0 * e / u_pos * S.diagonal()).mean()
            objective = objective + dro
            value += dro.item()
            extras["true"] = extras["true"] + cfg.dro_lambda * torch.log(
                torch.exp(-2.0 * S.diagonal() / cfg.dro_lambda).mean()
            )
            self.u_pos = stored(u_pos)
        return objective, value, extras


SEQUENCE = [  # (epoch, indices): N = 9, B = 6; indices revisited within and across epochs
    (0, [0, 1, 2, 3, 4, 5]),
    (0, [6, 7, 8, 0, 1, 2]),
    (1, [3, 8, 1, 6, 0, 4]),
    (1, [2, 5, 7, 1, 3, 8]),
    (2, [4, 0, 6, 2, 7, 5]),
]

# In epoch 0 the tracked u is the exact g, so every case is also checked against the TRUE objective there.
CASES = {
    "sogclr": {"name": "sogclr", "temperature": 0.05},
    "sogclr_cosine": {
        "name": "sogclr",
        "temperature": 0.05,
        "gamma_schedule": "cosine",
        "gamma_min": 0.3,
        "gamma_decay_epochs": 2,
    },
    "isogclr": {
        "name": "isogclr",
        "tau_init": 0.02,
        "tau_min": 0.005,
        "tau_max": 0.05,
        "eta_init": 0.03,
        "tau_grad_clip": 2.0,
    },
    "isogclr_new": {"name": "isogclr_new", "eta_init": 0.002, "beta_u": 0.5},
    "isogclr_new_temp_net": {"name": "isogclr_new", "temp_net": True, "temp_net_prototypes": 8, "tau_max": 0.08},
    "isogclr_new_v2": {"name": "isogclr_new_v2", "tau_init": 0.03, "dro_lambda": 0.5},
    "fastclip_v3": {"name": "fastclip_v3", "temperature": 0.04},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_gcl_sequence_against_reference(case):
    N, B, d = 9, 6, 5
    gen = torch.Generator().manual_seed(3)
    batches = [
        (epoch, indices, normalized(gen, B, d, spread=0.6), normalized(gen, B, d, spread=0.6))
        for epoch, indices in SEQUENCE
    ]
    averaged = check_sequence(case, parse_loss_config(CASES[case]), batches, N, learn=True)
    assert averaged, "the sequence must revisit samples in a later epoch (γ < 1 mixes old and new estimates)"


def check_sequence(case: str, cfg: LossConfig, batches, N: int, learn: bool, atol: float = 1e-9) -> bool:
    """Feed `batches` (epoch, indices, image features, text features) to the loss and to the Simulator and compare
    every step: value, feature gradients, stored estimate, τ-gradients, τ and momentum, loss parameters; against
    the TRUE objective wherever γ = 1 makes u the exact g. `learn` also steps the loss's own parameters (θ, the
    temperature network). Returns whether a later epoch revisited a sample."""
    torch.manual_seed(0)
    B, d = len(batches[0][1]), batches[0][2].shape[1]
    loss_fn = build_loss(cfg, num_samples=N, embed_dim=d).double()
    sim = Simulator(cfg, N)
    averaged = False
    for step, (epoch, indices, a, c) in enumerate(batches):
        idx = torch.tensor(indices)
        a, c = a.clone().requires_grad_(True), c.clone().requires_grad_(True)
        averaged |= epoch > 0 and bool((sim.u["I"][idx] > 0).any())  # a revisit mixes old and new estimates

        # reference, on its own graph
        a2, c2 = a.detach().clone().requires_grad_(True), c.detach().clone().requires_grad_(True)
        x2, t2 = F.normalize(a2, dim=1), F.normalize(c2, dim=1)
        if getattr(cfg, "temp_net", False):
            taus = {"I": loss_fn.temp_net_image(x2.detach()), "T": loss_fn.temp_net_text(t2.detach())}
        elif cfg.name == "fastclip_v3":
            taus = {k: torch.exp(-loss_fn.theta.detach()).expand(B) for k in "IT"}
        elif cfg.name == "sogclr":
            taus = {k: torch.full((B,), cfg.temperature, dtype=torch.float64) for k in "IT"}
        else:
            taus = {k: sim.tau[k][idx].double() for k in "IT"}
        objective, value, extras = sim.step(x2, t2, idx, epoch, taus)
        grad_a, grad_c = torch.autograd.grad(objective, (a2, c2), retain_graph=True)

        for p in loss_fn.parameters():
            p.grad = None
        out = loss_fn(F.normalize(a, dim=1), F.normalize(c, dim=1), idx, epoch=epoch, step=step)
        out.loss.backward()

        what = f"{case} step {step}"
        close(out.loss, value, atol=atol, what=f"{what}: loss value")
        close(a.grad, grad_a, atol=atol, what=f"{what}: image feature gradient")
        close(c.grad, grad_c, atol=atol, what=f"{what}: text feature gradient")
        for k in "IT":
            close(torch.exp(loss_fn.state.tensors[f"log_u_{k}"].double()), sim.u[k], what=f"{what}: u_{k}")
        assert out.stats["gamma"] == pytest.approx(
            gamma_ref(epoch, cfg.gamma_schedule, cfg.gamma, cfg.gamma_min, cfg.gamma_decay_epochs)
        )

        exact = out.stats["gamma"] == 1.0
        if exact:  # γ = 1: u is the exact g, so the spec's gradient is that of the TRUE objective
            true_a, true_c = torch.autograd.grad(extras["true"], (a2, c2), retain_graph=True)
            close(a.grad, true_a, rtol=1e-6, atol=min(atol, 1e-8), what=f"{what}: true-objective gradient")
            close(c.grad, true_c, rtol=1e-6, atol=min(atol, 1e-8), what=f"{what}: true-objective gradient")

        if cfg.name.startswith("isogclr"):
            if exact and min(cfg.rho_I, cfg.rho_T) >= math.log(B - 1):  # fresh: G_i = H(p_i) − log(B−1) + ρ > 0
                assert out.stats["tau_grad_I_pos"] == out.stats["tau_grad_T_pos"] == 1.0, f"{what}: a negative G"
            for k, M in (("I", x2 @ t2.T), ("T", t2 @ x2.T)):
                G = extras["G"][k]
                H_true = M.detach() if cfg.name == "isogclr_new_v2" else h_rows(M).detach()
                close(torch.tensor(out.stats[f"tau_grad_{k}"]), G.mean(), what=f"{what}: G_{k}")
                if exact:  # ∂/∂τ [τ(log g(τ) + ρ)] by autograd of the true g
                    tau_leaf = taus[k].detach().clone().requires_grad_(True)
                    rho = cfg.rho_I if k == "I" else cfg.rho_T
                    (G_true,) = torch.autograd.grad(
                        (tau_leaf * (torch.log(true_g(H_true, tau_leaf)) + rho)).sum(), tau_leaf
                    )
                    clip = cfg.tau_grad_clip or float("inf")
                    close(G, G_true.clamp(-clip, clip), rtol=1e-6, atol=1e-7, what=f"{what}: G vs true derivative")
                if not getattr(cfg, "temp_net", False):
                    close(loss_fn.state.tensors[f"tau_{k}"], sim.tau[k], what=f"{what}: tau_{k}")
                    close(loss_fn.state.tensors[f"m_{k}"], sim.m[k], what=f"{what}: m_{k}")
            if getattr(cfg, "temp_net", False):
                params = list(loss_fn.temp_net_image.parameters()) + list(loss_fn.temp_net_text.parameters())
                term = (extras["G"]["I"].detach() * loss_fn.temp_net_image(x2.detach())).mean() + (
                    extras["G"]["T"].detach() * loss_fn.temp_net_text(t2.detach())
                ).mean()
                expected = torch.autograd.grad(term, params)
                for p, g in zip(params, expected):
                    close(p.grad, g, what=f"{what}: temperature-network gradient")
        if cfg.name == "isogclr_new_v2":
            close(torch.exp(loss_fn.state.tensors["log_u_pos"].double()), sim.u_pos, what=f"{what}: u_pos")
        if cfg.name == "fastclip_v3":
            tau = torch.exp(-loss_fn.theta.detach())
            dF = (extras["dFdtau_parts"]["I"] + extras["dFdtau_parts"]["T"]).mean() + (cfg.rho_I + cfg.rho_T)
            close(loss_fn.theta.grad, -tau * dF, what=f"{what}: theta gradient")
            if exact:  # derivative of F(τ) = τ·mean(log g_I + log g_T) + 2ρτ via autograd
                theta = loss_fn.theta.detach().clone().requires_grad_(True)
                tau_t = torch.exp(-theta)
                S = (x2 @ t2.T).detach()
                logs = torch.log(true_g(h_rows(S), tau_t.expand(B))) + torch.log(true_g(h_rows(S.T), tau_t.expand(B)))
                F_true = tau_t * logs.mean() + (cfg.rho_I + cfg.rho_T) * tau_t
                (dtheta,) = torch.autograd.grad(F_true, theta)
                close(loss_fn.theta.grad, dtheta, rtol=1e-6, atol=1e-8, what=f"{what}: exact theta derivative")
            if learn:
                with torch.no_grad():  # a real optimizer step on θ, then the box projection
                    loss_fn.theta -= 0.5 * loss_fn.theta.grad
                loss_fn.after_optimizer_step()
                assert cfg.tau_min - 1e-12 <= math.exp(-loss_fn.theta.item()) <= cfg.tau_max + 1e-12
        if learn and getattr(cfg, "temp_net", False):
            with torch.no_grad():
                for p in loss_fn.parameters():
                    p -= 0.5 * p.grad
    return averaged


@pytest.mark.parametrize("lam", [0.5, 1.0, 4.0])
def test_isogclr_new_v2_fresh_step_is_the_gradient_of_F(lam):
    """At a fresh step (epoch 0, every sample new) the feature gradients and the τ-gradients equal
    autograd of the spec's objective F itself, with per-sample temperatures that differ across anchors."""
    gen = torch.Generator().manual_seed(11)
    N, B, d, rho = 10, 7, 5, 6.0
    cfg = parse_loss_config({"name": "isogclr_new_v2", "dro_lambda": lam, "tau_init": 0.05, "tau_grad_clip": 0.0})
    loss_fn = build_loss(cfg, num_samples=N).double()
    idx = torch.tensor([3, 9, 0, 4, 7, 1, 5])
    tau_I = torch.tensor([0.05, 0.02, 0.3, 0.01, 0.08, 0.6, 0.04], dtype=torch.float64)
    tau_T = torch.tensor([0.03, 0.5, 0.015, 0.2, 0.06, 0.01, 0.9], dtype=torch.float64)
    loss_fn.state.tensors["tau_I"][idx] = tau_I.float()
    loss_fn.state.tensors["tau_T"][idx] = tau_T.float()
    tau_I, tau_T = tau_I.float().double(), tau_T.float().double()  # what the float32 buffers hold
    a = normalized(gen, B, d, spread=0.7).requires_grad_(True)
    c = normalized(gen, B, d, spread=0.7).requires_grad_(True)

    a2, c2 = a.detach().clone().requires_grad_(True), c.detach().clone().requires_grad_(True)
    leaves = (tau_I.clone().requires_grad_(True), tau_T.clone().requires_grad_(True))
    F_value = isogclr_new_v2_objective(F.normalize(a2, dim=1) @ F.normalize(c2, dim=1).T, *leaves, rho, lam)
    grad_a, grad_c, dF_dtau_I, dF_dtau_T = torch.autograd.grad(F_value, (a2, c2, *leaves))

    out = loss_fn(F.normalize(a, dim=1), F.normalize(c, dim=1), idx, epoch=0)
    out.loss.backward()
    close(a.grad, grad_a, rtol=1e-6, atol=1e-10, what="image feature gradient vs autograd of F")
    close(c.grad, grad_c, rtol=1e-6, atol=1e-10, what="text feature gradient vs autograd of F")
    # F averages over anchors: B·∂F/∂τ_i is anchor i's τ-gradient G_i; the first step moves τ_i by η·β·G_i
    # (momentum from 0) inside the box.
    step = cfg.eta_init * cfg.beta_u
    for side, tau, dF in (("I", tau_I, dF_dtau_I), ("T", tau_T, dF_dtau_T)):
        expected = (tau - step * B * dF).clamp(cfg.tau_min, cfg.tau_max)
        close(
            loss_fn.state.tensors[f"tau_{side}"][idx], expected, rtol=1e-5, atol=1e-7, what=f"τ_{side} after the step"
        )
    assert out.stats["tau_grad_I_pos"] == pytest.approx(float((dF_dtau_I > 0).double().mean()))


def test_isogclr_new_v2_pulls_each_positive_once():
    """The positive pair's only pull is the DRO term's: with λ → ∞ its weights are all 1, so the gradient
    on S_ii is −2/B, and the negatives' softmax weights leave no mass on the diagonal."""
    gen = torch.Generator().manual_seed(12)
    B = 6
    x = normalized(gen, B, 4, 0.8).requires_grad_(True)
    t = normalized(gen, B, 4, 0.8)
    loss_fn = build_loss({"name": "isogclr_new_v2", "dro_lambda": 1e6, "tau_init": 0.1}, num_samples=B).double()
    S = (x @ t.T).detach().requires_grad_(True)
    loss_fn(S @ torch.eye(B, dtype=torch.float64), torch.eye(B, dtype=torch.float64), torch.arange(B)).loss.backward()
    close(S.grad.diagonal(), torch.full((B,), -2.0 / B, dtype=torch.float64), rtol=1e-5, what="∂loss/∂S_ii")


def test_sogclr_epoch0_state_is_ghat():
    """With indices 0..B−1 at epoch 0 the stored estimate is the batch's own: e^{ℓ_i} = ĝ_i = g_i, at τ = 0.01."""
    gen = torch.Generator().manual_seed(5)
    B, tau = 8, 0.01
    x, t = normalized(gen, B, 6, 0.7), normalized(gen, B, 6, 0.7)
    loss_fn = build_loss({"name": "sogclr", "temperature": tau}, num_samples=B)
    loss_fn(x.float(), t.float(), torch.arange(B), epoch=0)
    S = x.float().double() @ t.float().double().T
    for k, M in (("I", S), ("T", S.T)):
        expected = torch.log(true_g(h_rows(M), torch.full((B,), tau, dtype=torch.float64)))
        close(loss_fn.state.tensors[f"log_u_{k}"], expected, rtol=1e-5, atol=1e-4, what=f"log u_{k}")


def test_float64_inputs_stay_float64():
    gen = torch.Generator().manual_seed(6)
    x, t = normalized(gen, 5, 4).requires_grad_(True), normalized(gen, 5, 4)
    out = build_loss({"name": "isogclr"}, num_samples=5)(x, t, torch.arange(5))
    assert out.loss.dtype == torch.float64
    out.loss.backward()
    assert x.grad.dtype == torch.float64


@pytest.mark.parametrize("name", ["clip", "sogclr", "isogclr_new_v2", "siglip", "dcl", "cyclip"])
def test_similarities_stay_float32_under_autocast(name):
    gen = torch.Generator().manual_seed(7)
    x, t = normalized(gen, 6, 4).float().requires_grad_(True), normalized(gen, 6, 4).float()
    plain = build_loss({"name": name}, num_samples=6)(x, t, torch.arange(6)).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = build_loss({"name": name}, num_samples=6)(x, t, torch.arange(6)).loss
    assert autocast.dtype == torch.float32 and autocast.item() == plain.item()


# ------------------------------------------------------------------------------------ separation


def separation_cases(tau: float) -> dict[str, dict]:
    """Every GCL loss at temperature `tau`; τ held still (η = 0) and β = 1, so the stored momentum IS each
    anchor's τ-gradient G_i and the check compares G per anchor."""
    frozen = {"tau_init": tau, "tau_min": 0.001, "eta_init": 0.0, "beta_u": 1.0, "tau_grad_clip": 0.0}
    return {
        "sogclr": {"name": "sogclr", "temperature": tau},
        "sogclr_gamma1": {"name": "sogclr", "temperature": tau, "gamma": 1.0},
        "isogclr": {"name": "isogclr", **frozen},
        "isogclr_new": {"name": "isogclr_new", **frozen},
        "isogclr_new_temp_net": {
            "name": "isogclr_new",
            "temp_net": True,
            "temp_net_prototypes": 8,
            **{k: frozen[k] for k in ("tau_init", "tau_min", "tau_grad_clip")},
        },
        "isogclr_new_v2": {"name": "isogclr_new_v2", **frozen},
        "fastclip_v3": {"name": "fastclip_v3", "temperature": tau, "tau_min": 0.001},
    }


def separation_batches(kind: str, B: int = 6) -> list:
    """`far`: every anchor's hardest negative 0.4 below its positive, fresh and revisited; `easier`: a hard first
    batch (negatives near or above the positives), then 14 epochs of far-separated batches on the same samples."""
    gen = torch.Generator().manual_seed(21)
    indices = list(range(B))
    if kind == "far":
        return [(epoch, indices, *separated(gen, B)) for epoch in range(4)]
    hard = (0, indices, normalized(gen, B, B + 1, spread=0.3), normalized(gen, B, B + 1, spread=0.3))
    return [hard] + [(epoch, indices, *separated(gen, B)) for epoch in range(1, 15)]


@pytest.mark.parametrize("kind", ["far", "easier"])
@pytest.mark.parametrize("tau", [0.01, 0.005])
@pytest.mark.parametrize("case", sorted(separation_cases(0.01)))
def test_gcl_separation_against_true_objective(case, tau, kind):
    """specs/losses.md "Reference relations", separation: the value, feature gradients, stored estimate and
    τ-gradients match the float64 reference at 1e-6 relative where g is as small as e^{-80}. The old shifted form
    with ε = 1e-8 failed here by orders of magnitude (it damped each such anchor's gradient by s/(s + ε))."""
    batches = separation_batches(kind)
    x, t = batches[-1][2], batches[-1][3]
    S = x @ t.T
    gaps = S.diagonal() - S.masked_fill(~offdiag(len(S)), -math.inf).amax(dim=1)
    assert float(gaps.min()) > 0.3, "the last batch must be far separated"
    check_sequence(case, parse_loss_config(separation_cases(tau)[case]), batches, N=6, learn=False, atol=1e-12)
