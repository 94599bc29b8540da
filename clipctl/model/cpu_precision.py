"""Whether the towers train faster in bf16 autocast than in float32 on this CPU: the capability probe and the
measured speedups that `train.precision = auto` follows on a CPU and `clipctl doctor` reports.

The speedups are figures from `bench/precision.py` (bench/results/precision.json), copied here so that the package
never reads bench/ at runtime; a tower set the benchmark has not measured trains in float32.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measured:
    """One tower set in bench/results/precision.json: how much faster bf16 stepped, and whether a short run's
    objectives matched float32's (None: not compared, e.g. towers too slow to train on a CPU)."""

    speedup: float  # float32 step time / bf16 autocast step time
    equal_metrics: bool | None


# bench/results/precision.json, measured 2026-12-05 on this project's CPU (Intel, AVX512-BF16, no AMX; 2 threads
# on a shared machine, load recorded there); keys are `model.image_model`, both sets with a DistilBERT text tower:
#   test_resnet: the quickstart's towers (2-layer DistilBERT), batch 128 at 64 px: bf16 2.57x float32's step speed
#                (bf16 + channels-last 3.87x); 100 updates from seeds 0-2: test objective mean 0.0788 in both,
#                validation 0.0755 (bf16) against 0.0747 (float32), within one standard deviation: equal
#   resnet50:    the paper's towers (ResNet-50 + DistilBERT), batch 8 at 224 px: bf16 1.28x (+ channels-last 1.88x);
#                too slow to train on a CPU for a metrics comparison, so not compared
CPU_BF16: dict[str, Measured] = {"test_resnet": Measured(2.57, True), "resnet50": Measured(1.28, None)}
# Below this, a measured gain is within the round-to-round noise of a shared machine; float32 stays.
MIN_SPEEDUP = 1.1


@dataclass(frozen=True)
class CpuPrecision:
    """What `auto` trains in on this CPU for one image tower, and why (the dry run and doctor print `reason`)."""

    value: str  # "bf16" or "no", Accelerate's names
    reason: str


def cpu_bf16_matmul() -> bool:
    """bf16 matrix instructions in this CPU (AVX512-BF16 or AMX), as torch's own CPU probe reports them. oneDNN's
    `_is_mkldnn_bf16_supported` also says yes on plain AVX-512, where bf16 is converted and no faster than float32."""
    import torch  # here: doctor (and the run writer through it) is read before torch loads, e.g. by eval's checks

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def cpu_auto_precision(image_model: str | None) -> CpuPrecision:
    """bf16 only on a CPU with bf16 matrix instructions, for a tower set the benchmark measured faster in it and
    whose short run matched float32's objectives; float32 in every other case, with the reason."""
    if not cpu_bf16_matmul():
        return CpuPrecision("no", "this CPU has no bf16 matrix instructions (AVX512-BF16 or AMX)")
    tower = repr(image_model)
    measured = CPU_BF16.get(image_model or "")
    if measured is None:
        return CpuPrecision("no", f"bf16 not benchmarked on the CPU for image tower {tower}")
    speed = f"bf16 measured {measured.speedup:.2f}x float32's step speed for image tower {tower}"
    if measured.speedup < MIN_SPEEDUP:
        return CpuPrecision("no", f"{speed}, under {MIN_SPEEDUP}x")
    if measured.equal_metrics is None:
        return CpuPrecision("no", f"{speed}, but its short-run metrics were not compared with float32's")
    if not measured.equal_metrics:
        return CpuPrecision("no", f"{speed}, but its short-run objective differed from float32's")
    return CpuPrecision("bf16", f"CPU with bf16 matrix instructions; {speed}, at float32's short-run objective")


def cpu_auto_summary() -> str:
    """One line for `clipctl doctor`: what `train.precision = auto` trains each benchmarked tower in on this CPU."""
    if not cpu_bf16_matmul():
        return "no (float32) for every tower: " + cpu_auto_precision(None).reason
    parts = [f"{tower} {cpu_auto_precision(tower).value} ({m.speedup:.2f}x measured)" for tower, m in CPU_BF16.items()]
    return ", ".join(parts) + "; other image towers no (not benchmarked)"
