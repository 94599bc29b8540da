"""The RNG streams of one process, captured into and restored from a training state (exact resume)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Every RNG this process draws from, in weights-only-safe containers (CUDA: the current device's only,
    so a state saved on a machine with 8 GPUs restores on one with fewer)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].copy()),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        # one device's state; older checkpoints kept every device's (a list): take the first
        torch.cuda.set_rng_state(cuda[0] if isinstance(cuda, (list, tuple)) else cuda)


def rank_rng_state(saved: Any, rank: int, world: int) -> dict[str, Any] | None:
    """This rank's RNG state from a training state's `rng` (one entry per rank), or None when the state was
    saved with fewer ranks than this one (that rank then keeps its freshly seeded RNG). Older states hold one
    dict: rank 0's."""
    states = saved if isinstance(saved, list) else [saved]
    return states[rank] if rank < len(states) else None


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
