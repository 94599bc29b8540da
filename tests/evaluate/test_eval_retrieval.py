"""Retrieval recall@k against brute-force references written here with plain Python loops."""

from __future__ import annotations

import math
import random

import pytest
import torch

from clipctl.errors import DataError, UsageError
from clipctl.evaluate import exact, retrieval_metrics

KS = (1, 5, 10)


def _dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v))


def _grid_dot(u: list[float], v: list[float]) -> int:
    """Exact dot product, times 2**48, of the features rounded to the 2**-24 grid clipctl defines its scores on."""
    return sum(round(a * 2**24) * round(b * 2**24) for a, b in zip(u, v))


def reference(images: torch.Tensor, texts: torch.Tensor, t2i: list[int], ks=KS, dot=_dot) -> dict[str, float]:
    """Recall@k by definition: rank = number of items scoring strictly higher than the correct one."""
    img, txt = images.tolist(), texts.tolist()
    scores = [[dot(i, t) for t in txt] for i in img]
    tr_ranks = []
    for i in range(len(img)):
        best = max(scores[i][j] for j in range(len(txt)) if t2i[j] == i)
        tr_ranks.append(sum(1 for j in range(len(txt)) if scores[i][j] > best))
    ir_ranks = []
    for j in range(len(txt)):
        own = scores[t2i[j]][j]
        ir_ranks.append(sum(1 for i in range(len(img)) if scores[i][j] > own))
    out = {f"tr@{k}": sum(1 for r in tr_ranks if r < k) / len(img) for k in ks}
    out.update({f"ir@{k}": sum(1 for r in ir_ranks if r < k) / len(txt) for k in ks})
    out["r_mean"] = sum(out.values()) / len(out)
    return out


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(rows, dim=1)


def _data_with_ties(seed: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """13 images, 1-4 captions each (shuffled), captions near their image, plus deliberate exact ties."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    images = _unit(torch.randn(13, 8, generator=gen))
    images[5] = images[2]  # two identical images
    t2i = [i for i in range(13) for _ in range(rng.randint(1, 4))]
    rng.shuffle(t2i)
    texts = _unit(images[t2i] + 0.9 * torch.randn(len(t2i), 8, generator=gen))
    first_of = {image: j for j, image in reversed(list(enumerate(t2i)))}
    texts[first_of[7]] = texts[first_of[3]]  # the same caption under two different images
    texts[first_of[1]] = images[4]  # a caption that ties exactly with another image's own score
    return images, texts, t2i


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])
def test_matches_brute_force_with_ties_and_uneven_chunks(seed: int, chunk_size: int) -> None:
    images, texts, t2i = _data_with_ties(seed)
    got = retrieval_metrics(images, texts, torch.tensor(t2i), chunk_size=chunk_size)
    assert got == reference(images, texts, t2i)


def test_other_ks_and_list_input() -> None:
    images, texts, t2i = _data_with_ties(3)
    got = retrieval_metrics(images, texts, t2i, ks=(2, 3), chunk_size=4)
    assert got == reference(images, texts, t2i, ks=(2, 3))
    assert list(got) == ["tr@2", "tr@3", "ir@2", "ir@3", "r_mean"]


def test_hand_made_case_ties_count_for_the_model() -> None:
    # images e0, e1; captions: e0 (image 0), e1 (image 1), (e0+e1)/sqrt2 (image 1) which scores equally with both.
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [math.sqrt(0.5), math.sqrt(0.5)]])
    got = retrieval_metrics(images, texts, torch.tensor([0, 1, 1]), ks=(1,))
    assert got == {"tr@1": 1.0, "ir@1": 1.0, "r_mean": 1.0}  # a ">=" rule would give ir@1 = 2/3
    # TR uses the BEST of an image's captions: image 1 keeps rank 0 although its caption 2 ties with image 0.
    swapped = retrieval_metrics(images, texts[[0, 2, 1]], torch.tensor([0, 1, 1]), ks=(1,))
    assert swapped["tr@1"] == 1.0


def test_any_caption_rule_for_text_retrieval() -> None:
    # Image 0 has a bad caption (ranked last) and a good one: TR@1 counts it as a hit.
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    got = retrieval_metrics(images, texts, torch.tensor([0, 0, 1]), ks=(1,))
    assert got["tr@1"] == 1.0
    assert got["ir@1"] == pytest.approx(2 / 3)  # caption 0 finds image 1 first


def test_lattice_features_all_ties_exact() -> None:
    """Features whose scores are multiples of 1/4: ties everywhere, all arithmetic exact in both implementations."""
    rng = random.Random(5)
    pool = [
        [s * 0.5 for s in signs]
        for signs in ([a, b, c, d] for a in (1, -1) for b in (1, -1) for c in (1, -1) for d in (1, -1))
    ]
    pool += [[1.0 if k == i else 0.0 for k in range(4)] for i in range(4)]
    images = torch.tensor([rng.choice(pool) for _ in range(9)])
    t2i = list(range(9)) + [rng.randrange(9) for _ in range(20)]
    texts = torch.tensor([rng.choice(pool) for _ in t2i])
    for chunk_size in (1, 4, 50):
        assert retrieval_metrics(images, texts, t2i, chunk_size=chunk_size) == reference(images, texts, t2i)


def test_near_ties_below_float32_resolution_are_resolved_exactly(monkeypatch) -> None:
    """Competitors within ~1e-7 of the correct score: float32 cannot order them, the exact path must."""
    gen = torch.Generator().manual_seed(11)
    base = _unit(torch.randn(6, 32, generator=gen))
    siblings = _unit(base.repeat_interleave(4, dim=0) + 3e-7 * torch.randn(24, 32, generator=gen))
    images = torch.cat([siblings, _unit(torch.randn(40, 32, generator=gen))])
    t2i = list(range(64))
    texts = _unit(images + 0.2 * torch.randn(64, 32, generator=gen))
    calls = []
    original = exact.pair_dots
    monkeypatch.setattr(exact, "pair_dots", lambda *a: calls.append(a[2].numel()) or original(*a))
    expected = reference(images, texts, t2i, dot=_grid_dot)
    for chunk_size in (1, 5, 64):
        assert retrieval_metrics(images, texts, t2i, chunk_size=chunk_size) == expected
    assert len(calls) > 3  # beyond the positives, unsure pairs were recomputed exactly


def test_collapsed_encoder_everything_ties() -> None:
    """A collapsed model (all features equal) ties everywhere: every rank is 0 (the dense exact path)."""
    images = _unit(torch.ones(40, 16))
    texts = _unit(torch.ones(120, 16))
    t2i = torch.arange(120) % 40
    got = retrieval_metrics(images, texts, t2i, chunk_size=16)
    assert set(got.values()) == {1.0}


def test_partly_collapsed_features_few_lines_many_ties() -> None:
    """Two images and a quarter of the captions share one vector: few lines, each mostly ties (dense exact lines)."""
    gen = torch.Generator().manual_seed(8)
    images = _unit(torch.randn(40, 16, generator=gen))
    t2i = list(range(40)) * 3
    texts = images[t2i].clone()
    images[1] = images[0]
    texts[[j for j in range(120) if j % 4 == 0 or t2i[j] in (0, 1)]] = images[0]
    expected = reference(images, texts, t2i)
    for chunk_size in (1, 6, 40):
        assert retrieval_metrics(images, texts, t2i, chunk_size=chunk_size) == expected


def test_chunked_equals_unchunked_on_larger_data() -> None:
    gen = torch.Generator().manual_seed(3)
    images = _unit(torch.randn(120, 64, generator=gen))
    t2i = torch.arange(600) % 120
    texts = _unit(images[t2i] + 1.2 * torch.randn(600, 64, generator=gen))
    full = retrieval_metrics(images, texts, t2i, chunk_size=120)
    assert 0.0 < full["tr@10"] < 1.0 and 0.0 < full["ir@1"] < 1.0
    for chunk_size in (1, 7, 64, 119):
        assert retrieval_metrics(images, texts, t2i, chunk_size=chunk_size) == full
    rounded = images.bfloat16().float()  # bf16 encoders: norms off by up to ~0.4%
    assert retrieval_metrics(rounded, texts, t2i, chunk_size=13) == retrieval_metrics(
        rounded, texts, t2i, chunk_size=120
    )


def test_respects_trainer_tf32_setting_and_restores_it() -> None:
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        images, texts, t2i = _data_with_ties(4)
        assert retrieval_metrics(images, texts, t2i, chunk_size=2) == reference(images, texts, t2i)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.mark.parametrize(
    "mutate, error, fragment",
    [
        (lambda i, t, m: (_unit(i[:, :4]), t, m), DataError, "dimension"),
        (lambda i, t, m: (i, t, m[:-1]), DataError, "text_to_image"),
        (lambda i, t, m: (i, t, torch.where(m == 0, 99, m)), DataError, "text_to_image["),
        (lambda i, t, m: (i, t, torch.where(m == 2, 1, m)), DataError, "image 2 has no caption"),
        (lambda i, t, m: (i * 3, t, m), DataError, "L2 norm"),
        (
            lambda i, t, m: (i, torch.where(torch.arange(len(t))[:, None] == 3, float("nan"), t), m),
            DataError,
            "row 3 is not finite",
        ),
        (lambda i, t, m: (i, t, m.float()), DataError, "integer"),
        (lambda i, t, m: (i[:0], t, m), DataError, "empty"),
        (lambda i, t, m: (i[0], t, m), DataError, "(n, d)"),
    ],
)
def test_bad_input_is_one_clear_line(mutate, error, fragment) -> None:
    images, texts, t2i = _data_with_ties(0)
    args = mutate(images, texts, torch.tensor(t2i))
    with pytest.raises(error) as info:
        retrieval_metrics(*args)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs", [{"ks": ()}, {"ks": (0, 1)}, {"ks": (1, 1)}, {"ks": (1.5,)}, {"chunk_size": 0}, {"chunk_size": True}]
)
def test_bad_arguments_are_usage_errors(kwargs) -> None:
    images, texts, t2i = _data_with_ties(0)
    with pytest.raises(UsageError):
        retrieval_metrics(images, texts, t2i, **kwargs)


def test_count_true_matches_sum() -> None:
    gen = torch.Generator().manual_seed(0)
    for shape in [(1, 1), (3, 7), (600, 17), (2, 9000), (513, 2040)]:
        for p in (0.0, 0.3, 1.0):
            mask = torch.rand(shape, generator=gen) < p
            for dim in (0, 1):
                assert torch.equal(exact.count_true(mask, dim), mask.sum(dim))
                assert torch.equal(exact.count_true(mask.T.contiguous().T, dim), mask.sum(dim))
