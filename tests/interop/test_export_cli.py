"""`clipctl export` from the command line: what it prints, and every refusal as one line, its exit code, and nothing
written (no --out, no hidden staging folder left beside it)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from clipctl.errors import UsageError
from clipctl.interop import export as export_module
from clipctl.interop import openclip_format
from clipctl.model.config import ModelConfig

pytestmark = pytest.mark.slow


def _nothing_written(parent: Path) -> None:
    """The parent of --out holds nothing new: no export, no `.NAME.*.tmp` staging folder."""
    assert list(parent.iterdir()) == []


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("clipctl: error: ")
    return err


def test_export_prints_how_to_load_it(quickstart, run_cli, tmp_path):
    out = tmp_path / "exports" / "q"
    code, stdout, err = run_cli("export", quickstart.run, "--format", "open_clip", "--out", out, "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["shim"] == "clipctl.interop.open_clip" and result["format"] == "open_clip"
    assert set(result["files"]) == {
        "clipctl.json",
        "config.json",
        "open_clip_config.json",
        "open_clip_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert max(result["differences"].values()) <= export_module.TOLERANCE
    assert sorted(p.name for p in out.parent.iterdir()) == ["q"]  # no staging folder left
    code, _, err = run_cli("export", quickstart.ckpt, "--format", "safetensors", "--out", tmp_path / "s")
    assert code == 0 and "verified" in err and "temperature τ = " in err
    code, _, err = run_cli("export", tmp_path / "s", "--format", "open_clip", "--out", tmp_path / "again")  # re-export
    assert code == 0 and "import clipctl.interop.open_clip; open_clip.create_model_and_transforms(" in err


def test_an_existing_out_is_refused_and_kept(quickstart, run_cli, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = run_cli("export", quickstart.run, "--out", out)
    assert code == 4 and "already exists" in _one_line(err)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"


def test_hf_is_refused_with_the_reason(quickstart, run_cli, tmp_path):
    code, _, err = run_cli("export", quickstart.run, "--format", "hf", "--out", tmp_path / "out" / "hf")
    assert code == 2
    assert "no Hugging Face save_pretrained model holds a timm image tower ('test_resnet'" in _one_line(err)
    assert "use --format open_clip or --format safetensors" in err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_an_unknown_format_is_a_usage_error(quickstart, run_cli, tmp_path):
    code, _, err = run_cli("export", quickstart.run, "--format", "onnx", "--out", tmp_path / "x")
    assert code == 2 and "--format onnx: expected one of open_clip, safetensors, hf" in _one_line(err)


@pytest.mark.parametrize("kind", ["garbage", "foreign", "folder"])
def test_corrupt_or_foreign_sources_write_nothing(kind, run_cli, tmp_path):
    source = tmp_path / "in" / "ckpt.pt"
    source.parent.mkdir()
    if kind == "garbage":
        source.write_bytes(os.urandom(512))
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, source)
    else:
        source = source.parent
    parent = tmp_path / "exports"
    parent.mkdir()
    code, _, err = run_cli("export", source, "--out", parent / "x")
    assert code == 2 and str(source) in _one_line(err)
    _nothing_written(parent)


def test_a_verification_mismatch_refuses_and_writes_nothing(quickstart, run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)  # any deviation, even 0, now counts as a mismatch
    parent = tmp_path / "exports"
    parent.mkdir()
    for fmt in ("open_clip", "safetensors"):
        code, _, err = run_cli("export", quickstart.run, "--format", fmt, "--out", parent / fmt)
        assert code == 1 and "export refused:" in _one_line(err) and "nothing was written" in err
    _nothing_written(parent)


def test_a_full_disk_mid_export_leaves_nothing(quickstart, run_cli, tmp_path, monkeypatch):
    def full(state, path):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(export_module, "_save_safetensors", full)
    parent = tmp_path / "exports"
    parent.mkdir()
    code, _, err = run_cli("export", quickstart.run, "--out", parent / "x")
    assert code == 1 and "disk full" in _one_line(err)
    _nothing_written(parent)


def test_an_interrupt_mid_export_leaves_nothing(quickstart, run_cli, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "_compare", interrupted)
    parent = tmp_path / "exports"
    parent.mkdir()
    code, _, err = run_cli("export", quickstart.run, "--format", "safetensors", "--out", parent / "x")
    assert code == 130 and "interrupted" in _one_line(err)
    _nothing_written(parent)


def test_image_kwargs_open_clip_cannot_express_are_refused():
    with pytest.raises(UsageError, match="model.image_kwargs.in_chans has no counterpart"):
        openclip_format.vision_cfg(ModelConfig(image_model="test_resnet", image_kwargs={"in_chans": 1}), 32)
    cfg = openclip_format.vision_cfg(
        ModelConfig(image_model="test_resnet", image_kwargs={"drop_path_rate": 0.1, "drop_rate": 0.2}), 32
    )
    assert cfg["timm_drop_path"] == 0.1 and "timm_drop" not in cfg  # dropout does nothing in eval mode


def test_text_models_open_clip_cannot_build_are_refused():
    shipped = {"bert": {}, "roberta": {}}
    assert openclip_format.check_text_type("bert", shipped) is False
    assert openclip_format.check_text_type("distilbert", shipped) is True
    with pytest.raises(UsageError, match="no text tower for model type 'electra'"):
        openclip_format.check_text_type("electra", shipped)
