"""Run with the release before the log domain (commit 54df835) on PYTHONPATH: writes old-form loss states and
what that release computed for the next step, for tests/losses/test_losses_old_form.py."""

import copy
import sys

import torch
import torch.nn.functional as F

from clipctl.losses import build_loss

out = {}
for name, cfg in {
    "sogclr": {"name": "sogclr", "temperature": 0.05},
    "isogclr_new": {"name": "isogclr_new", "tau_init": 0.03, "eta_init": 0.01},
    "isogclr_new_v2": {"name": "isogclr_new_v2", "tau_init": 0.05, "dro_lambda": 0.5},
}.items():
    gen = torch.Generator().manual_seed(7)
    N, B, d = 14, 6, 5  # samples 12 and 13 are never visited
    loss = build_loss(cfg, num_samples=N).double()
    for epoch, idx in ((0, [0, 1, 2, 3, 4, 5]), (0, [6, 7, 8, 9, 10, 11]), (1, [3, 8, 1, 6, 0, 4])):
        x = F.normalize(torch.randn(B, d, generator=gen, dtype=torch.float64), dim=1)
        t = F.normalize(torch.randn(B, d, generator=gen, dtype=torch.float64), dim=1)
        loss(x, t, torch.tensor(idx), epoch=epoch)
    state = copy.deepcopy(loss.state_dict())  # the state tensors are live: the next step would change them
    x = F.normalize(torch.randn(B, d, generator=gen, dtype=torch.float64), dim=1).requires_grad_(True)
    t = F.normalize(torch.randn(B, d, generator=gen, dtype=torch.float64), dim=1)
    idx = torch.tensor([2, 5, 7, 9, 11, 0])
    o = loss(x, t, idx, epoch=1)
    o.loss.backward()
    out[name] = {
        "config": cfg,
        "state": state,
        "next": {"x": x.detach(), "t": t, "index": idx, "loss": o.loss.detach(), "grad": x.grad},
    }
torch.save(out, sys.argv[1])
