"""The vendored ImageNet protocol data: OpenAI CLIP class names and templates, sorted wnids."""

from __future__ import annotations

import hashlib
import re
from importlib.resources import files

import pytest

from clipctl.data.imagenet_classes import imagenet_classnames, imagenet_templates, imagenet_wnids

SHA256 = {
    "imagenet_classnames.txt": "8800e39242cbed4c6889376e20a49cfdaf4f84a773a6686d15c3b39972ef94c4",
    "imagenet_templates.txt": "717aaf1055595d318aa456669c0de6675d883ccebfa70ca12ff890b7aab710cb",
    "imagenet_wnids.txt": "70002b0ff5de60a3a17a82dbfcff291931f96225ddf941ad2e182fc39e183d15",
}


@pytest.mark.parametrize("name", sorted(SHA256))
def test_vendored_files_are_unchanged(name: str) -> None:
    data = files("clipctl.data").joinpath("metadata", name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHA256[name]
    assert data.endswith(b"\n") and b"\r" not in data


def test_classnames() -> None:
    names = imagenet_classnames()
    assert len(names) == 1000
    assert names[:5] == ("tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark")
    assert (names[134], names[517]) == ("crane bird", "construction crane")  # OpenAI's disambiguation
    assert names[21] == "kite (bird of prey)" and names[999] == "toilet paper"
    duplicates = {n: [i for i, m in enumerate(names) if m == n] for n in set(names) if names.count(n) > 1}
    assert duplicates == {"missile": [657, 744], "sunglasses": [836, 837]}  # kept as published, for comparability


def test_templates() -> None:
    templates = imagenet_templates()
    assert len(templates) == 80 and len(set(templates)) == 80
    assert all(t.count("{}") == 1 for t in templates)
    assert templates[0] == "a bad photo of a {}." and templates[-1] == "a tattoo of the {}."
    # OpenAI's 7-template subset is part of the 80
    assert {
        "itap of a {}.",
        "a bad photo of the {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
    } <= set(templates)


def test_wnids() -> None:
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and len(set(wnids)) == 1000
    assert list(wnids) == sorted(wnids)
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert wnids[836:838] == ("n04355933", "n04356056")  # sunglass, sunglasses
