"""Tiny stand-ins for the tokenizer, model and datasets of the data/model contracts, for the evaluation tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def unit(rows: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(rows, dim=-1)


class FakeTokenizer:
    """encode(list[str]) -> LongTensor (n, 1): one id per distinct text (the contract's shape, padded with pad_id 0)."""

    pad_id = 0

    def __init__(self) -> None:
        self.texts: list[str] = []

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        ids = []
        for text in texts:
            if text not in self.texts:
                self.texts.append(text)
            ids.append(self.texts.index(text) + 1)
        return torch.tensor(ids, dtype=torch.long)[:, None]


class FakeModel(nn.Module):
    """encode_text looks a text's vector up by its id; encode_image passes images (vectors) through; both through an
    identity Linear (so autocast shows) and L2-normalised, like the real model. Records the state of every call."""

    def __init__(self, tokenizer: FakeTokenizer, text_vectors: dict[str, torch.Tensor], dim: int) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.text_vectors = text_vectors
        self.proj = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(dim))
        self.calls: list[dict] = []

    def _record(self, kind: str, out: torch.Tensor) -> torch.Tensor:
        self.calls.append(
            {"kind": kind, "training": self.training, "grad": torch.is_grad_enabled(), "dtype": out.dtype}
        )
        return unit(out)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        vectors = torch.stack([self.text_vectors[self.tokenizer.texts[int(i) - 1]] for i in ids[:, 0]])
        return self._record("text", self.proj(vectors))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self._record("image", self.proj(images.flatten(1)))


class FakeRetrievalDataset(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, captions: list[str], text_to_image: Sequence[int]) -> None:
        self._images = images
        self.images = [f"img{i}.png" for i in range(len(images))]
        self.captions = captions
        self.text_to_image = torch.as_tensor(text_to_image)

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self._images[i]


class FakeClassificationDataset(torch.utils.data.Dataset):
    def __init__(
        self, images: torch.Tensor, labels: Sequence[int], classnames: list[str], templates: list[str]
    ) -> None:
        self._images, self._labels = images, list(labels)
        self.classnames, self.templates = classnames, templates

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._images[i], self._labels[i]
