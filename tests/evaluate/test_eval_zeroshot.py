"""Zero-shot classifier (template averaging) and top-k accuracy, against hand-made cases and a brute-force loop."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.evalfakes import FakeModel, FakeTokenizer, unit

from clipctl.errors import DataError, UsageError
from clipctl.evaluate import zeroshot_accuracy, zeroshot_classifier
from clipctl.evaluate.zeroshot import fill_templates


def reference_accuracy(images: torch.Tensor, labels: list[int], weights: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """Top-k by definition: classes ahead of the true one score higher, or tie and have a lower index (argmax)."""
    img, w = images.tolist(), weights.tolist()
    ranks = []
    for x, y in zip(img, labels):
        scores = [sum(a * b for a, b in zip(x, row)) for row in w]
        ranks.append(sum(1 for c, s in enumerate(scores) if s > scores[y] or (s == scores[y] and c < y)))
    return {f"acc@{k}": sum(1 for r in ranks if r < k) / len(labels) for k in ks}


def test_hand_made_case_with_a_duplicated_class() -> None:
    eye = torch.eye(6)
    weights = eye.clone()
    weights[3] = eye[2]  # classes 2 and 3 share a name, like ImageNet's two "missile" classes
    images = torch.stack(
        [
            eye[0],  # class 0: correct at 1
            eye[2],  # labelled 3: ties with class 2, which has the lower index -> rank 1
            eye[2],  # labelled 2: wins the tie -> rank 0
            unit(0.9 * eye[1] + 0.1 * eye[4]),  # labelled 4: class 1 ahead -> rank 1
            unit(eye[0] + eye[1] + eye[2] + eye[4]),  # labelled 5: scores 0, five classes ahead -> rank 5
        ]
    )
    labels = torch.tensor([0, 3, 2, 4, 5])
    assert zeroshot_accuracy(images, labels, weights) == {"acc@1": 2 / 5, "acc@5": 4 / 5}
    assert zeroshot_accuracy(images, labels, weights, ks=(1, 2, 6)) == {"acc@1": 0.4, "acc@2": 0.8, "acc@6": 1.0}


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])
def test_matches_brute_force(chunk_size: int) -> None:
    gen = torch.Generator().manual_seed(7)
    weights = unit(torch.randn(9, 12, generator=gen))
    weights[4] = weights[1]
    labels = torch.randint(0, 9, (31,), generator=gen)
    images = unit(weights[labels] + 1.1 * torch.randn(31, 12, generator=gen))
    images[5] = weights[1]  # an exact tie between classes 1 and 4
    labels[5] = 4
    got = zeroshot_accuracy(images, labels, weights, chunk_size=chunk_size)
    assert got == reference_accuracy(images, labels.tolist(), weights)
    assert 0.0 < got["acc@1"] < got["acc@5"] < 1.0


def _classifier_setup():
    tokenizer = FakeTokenizer()
    vectors = {
        "a cat.": torch.tensor([3.0, 4.0, 0.0]),  # normalised: (0.6, 0.8, 0)
        "the cat.": torch.tensor([0.0, 0.0, 2.0]),  # normalised: (0, 0, 1)
        "a dog.": torch.tensor([0.0, 5.0, 0.0]),
        "the dog.": torch.tensor([1.0, 1.0, 0.0]),
    }
    return tokenizer, FakeModel(tokenizer, vectors, 3)


def test_classifier_averages_normalised_template_embeddings() -> None:
    tokenizer, model = _classifier_setup()
    weights = zeroshot_classifier(model, tokenizer, ["cat", "dog"], ["a {}.", "the {}."])
    cat = torch.tensor([0.3, 0.4, 0.5]) / math.sqrt(0.5)  # mean of (0.6, 0.8, 0) and (0, 0, 1), re-normalised
    dog_mean = torch.tensor([0.5 * math.sqrt(0.5), 0.5 + 0.5 * math.sqrt(0.5), 0.0])
    dog = dog_mean / dog_mean.norm()
    assert weights.dtype == torch.float32 and weights.shape == (2, 3)
    assert torch.allclose(weights, torch.stack([cat, dog]), atol=1e-6)
    for batch_size in (1, 3, 100):  # batches that split and span classes give the same weights
        again = zeroshot_classifier(model, tokenizer, ["cat", "dog"], ["a {}.", "the {}."], batch_size=batch_size)
        assert torch.allclose(again, weights, atol=1e-6)
    assert all(not call["training"] and not call["grad"] for call in model.calls)


def test_fill_templates_replaces_only_the_placeholder() -> None:
    assert fill_templates(["ice {cream}"], ["a {}.", "{} and {}"]) == ["a ice {cream}.", "ice {cream} and ice {cream}"]
    with pytest.raises(DataError, match="placeholder"):
        fill_templates(["cat"], ["a photo."])
    with pytest.raises(DataError, match="class name"):
        fill_templates([], ["a {}."])
    with pytest.raises(DataError, match="template"):
        fill_templates(["cat"], [])


def test_bad_input() -> None:
    weights = torch.eye(3)
    images = torch.eye(3)
    with pytest.raises(DataError, match=r"labels\[1\] = 3"):
        zeroshot_accuracy(images, torch.tensor([0, 3, 1]), weights)
    with pytest.raises(DataError, match="3 integer class indices"):
        zeroshot_accuracy(images, torch.tensor([0, 1]), weights)
    with pytest.raises(DataError, match="L2 norm"):
        zeroshot_accuracy(images, torch.tensor([0, 1, 2]), weights * 2)
    with pytest.raises(DataError, match="dimension"):
        zeroshot_accuracy(images, torch.tensor([0, 1, 2]), torch.eye(4))
    with pytest.raises(UsageError):
        zeroshot_accuracy(images, torch.tensor([0, 1, 2]), weights, ks=(0,))
