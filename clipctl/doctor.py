"""Environment report for `clipctl doctor`: versions, devices, precision support, data and cache paths, whether
the Hugging Face hub answers, and which pretrained weights and tokenizers the built-in recipes use are cached."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from clipctl import __version__
from clipctl import recipe as recipes
from clipctl.data.hub import hub_endpoint, hub_unreachable
from clipctl.model.cpu_precision import cpu_auto_summary, cpu_bf16_matmul
from clipctl.model.pretrained import hub_needs, in_cache
from clipctl.paths import data_root, hf_cache_dir, torch_hub_dir

PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "transformers",
    "tokenizers",
    "accelerate",
    "scikit-optimize",
    "safetensors",
    "typer",
    "rich",
)


def package_versions() -> dict[str, str]:
    versions = {"clipctl": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def device_report() -> dict[str, Any]:
    import torch

    report: dict[str, Any] = {
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [],
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "cpu_threads": torch.get_num_threads(),
        "cpu_bf16": True,
        "cpu_bf16_matmul": cpu_bf16_matmul(),
        "cpu_auto_precision": cpu_auto_summary(),
        "fp16_mixed_precision": torch.cuda.is_available(),
        "bf16_mixed_precision": (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        or not torch.cuda.is_available(),
        "distributed_backends": [b for b in ("nccl", "gloo") if getattr(torch.distributed, f"is_{b}_available")()],
    }
    for i in range(torch.cuda.device_count() if report["cuda_available"] else 0):
        props = torch.cuda.get_device_properties(i)
        report["cuda_devices"].append(
            {"index": i, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)}
        )
    report["default_device"] = "cuda" if report["cuda_available"] else ("mps" if report["mps_available"] else "cpu")
    return report


def paths_report() -> dict[str, str]:
    return {"data_root": str(data_root().resolve()), "hf_cache": str(hf_cache_dir()), "torch_hub": str(torch_hub_dir())}


def hub_report() -> dict[str, Any]:
    """The endpoint ($HF_ENDPOINT or the default) and whether it answers within the probe's short timeout."""
    problem = hub_unreachable()
    return {"endpoint": hub_endpoint(), "reachable": problem is None, "problem": problem}


def pretrained_report() -> list[dict[str, Any]]:
    """Each hub repo the built-in train recipes read (weights, tokenizers), who reads it, and whether it is cached."""
    users: dict[tuple[str, str], list[str]] = {}
    needs = {}
    for name in recipes.builtin_recipe_names():
        path = recipes.find_recipe(name)
        if "tune" in recipes.read_toml(path):
            continue
        for need in hub_needs(recipes.load_recipe(path).model):
            users.setdefault((need.repo, need.what), []).append(name)
            needs[(need.repo, need.what)] = need
    cache = hf_cache_dir()
    return [
        {"repo": repo, "what": what, "cached": in_cache(needs[(repo, what)], cache), "recipes": names}
        for (repo, what), names in sorted(users.items())
    ]


def doctor_report() -> dict[str, Any]:
    return {
        "versions": package_versions(),
        "devices": device_report(),
        "paths": paths_report(),
        "hub": hub_report(),
        "pretrained": pretrained_report(),
    }
