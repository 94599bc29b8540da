"""CLIP model: paper and tiny towers, offline errors, freezing, checkpointing, pooling, local weights."""

from __future__ import annotations

import os

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

from clipctl.errors import EXIT_USAGE, UsageError
from clipctl.model.clip import CLIPModel, build_model
from clipctl.model.config import ModelConfig
from clipctl.recipe import load_recipe

VOCAB, PAD, MAX_LEN = 1000, 0, 32


def quickstart_cfg(**changes) -> ModelConfig:
    """Tiny towers (test_vit + the quickstart's 2-layer DistilBERT, dim 128), with changes."""
    return load_recipe("recipes/quickstart.toml", ["model.image_model=test_vit"]).model.model_copy(update=changes)


def no_dropout(cfg: ModelConfig) -> ModelConfig:
    return cfg.model_copy(update={"text_config": {**cfg.text_config, "dropout": 0.0, "attention_dropout": 0.0}})


def token_batch(batch: int = 4, length: int = 12, seed: int = 0) -> torch.Tensor:
    """Right-padded ids with varying lengths (at least 2 tokens)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, length), generator=gen)
    for row, used in enumerate(torch.randint(2, length + 1, (batch,), generator=gen).tolist()):
        ids[row, used:] = PAD
    return ids


def assert_embeddings(features: torch.Tensor, batch: int, dim: int) -> None:
    assert features.shape == (batch, dim)
    assert features.dtype == torch.float32
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(batch), atol=1e-5, rtol=0)


@pytest.fixture
def empty_offline_hub(tmp_path, monkeypatch):
    """No network and an empty hub cache, whatever the machine has cached."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_paper_towers_from_config_give_normalised_embeddings():
    cfg = load_recipe(
        "recipes/sogclr_adamw.toml", ["model.image_pretrained=false", "model.text_pretrained=false"]
    ).model
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=30522, pad_id=0, max_len=30).eval()
    assert model.image_tower.num_features == 2048 and model.text_tower.width == 768
    text_config = model.text_tower.encoder.config
    assert (text_config.model_type, text_config.n_layers, text_config.n_heads) == ("distilbert", 6, 12)
    with torch.no_grad():
        image_features, text_features = model(torch.randn(2, 3, 224, 224), token_batch(2, 30))
    assert_embeddings(image_features, 2, 256)
    assert_embeddings(text_features, 2, 256)


def test_tiny_towers_give_normalised_embeddings_and_train():
    torch.manual_seed(0)
    model = build_model(quickstart_cfg(), VOCAB, PAD, max_len=MAX_LEN)
    image_features, text_features = model(torch.randn(4, 3, 64, 64), token_batch(4, MAX_LEN))
    assert_embeddings(image_features, 4, 128)
    assert_embeddings(text_features, 4, 128)
    assert_embeddings(model.encode_image(torch.randn(3, 3, 64, 64)), 3, 128)
    assert_embeddings(model.encode_text(token_batch(5)), 5, 128)
    (image_features @ text_features.T).logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_float64_model_keeps_float64_features():
    model = build_model(quickstart_cfg(), VOCAB, PAD).double()
    image_features, text_features = model(torch.randn(2, 3, 64, 64, dtype=torch.float64), token_batch(2))
    assert image_features.dtype == text_features.dtype == torch.float64


def test_offline_pretrained_image_tower_is_one_line_usage_error(empty_offline_hub):
    with pytest.raises(UsageError) as err:
        build_model(quickstart_cfg(image_pretrained=True), VOCAB, PAD)
    message = str(err.value)
    assert err.value.exit_code == EXIT_USAGE and "\n" not in message
    assert "model.image_model = 'test_vit'" in message
    assert "model.image_checkpoint" in message and "model.image_pretrained = false" in message


def test_offline_pretrained_text_tower_is_one_line_usage_error(empty_offline_hub):
    cfg = quickstart_cfg(text_model="clipctl-tests/not-a-cached-model", text_pretrained=True, text_config={})
    with pytest.raises(UsageError) as err:
        build_model(cfg, VOCAB, PAD)
    message = str(err.value)
    assert err.value.exit_code == EXIT_USAGE and "\n" not in message
    assert "model.text_model = 'clipctl-tests/not-a-cached-model'" in message
    assert "local folder" in message and "model.text_pretrained = false" in message


def test_unknown_scratch_architecture_offline_is_usage_error(empty_offline_hub):
    with pytest.raises(UsageError, match=r"model.text_model = 'clipctl-tests/unknown'.*model type"):
        build_model(quickstart_cfg(text_model="clipctl-tests/unknown"), VOCAB, PAD)


def test_load_weights_false_builds_pretrained_recipes_offline(empty_offline_hub):
    """Eval/resume build the architecture and load a state dict, so they must not need the hub."""
    cfg = quickstart_cfg(image_pretrained=True, text_pretrained=True)
    loaded = build_model(cfg, VOCAB, PAD, load_weights=False).state_dict()
    scratch = build_model(quickstart_cfg(), VOCAB, PAD).state_dict()
    assert {k: v.shape for k, v in loaded.items()} == {k: v.shape for k, v in scratch.items()}


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"image_model": "test_vitt"}, r"model.image_model = 'test_vitt' is not a timm model; did you mean test_vit"),
        ({"image_kwargs": {"num_classes": 10}}, r"model.image_kwargs.num_classes is not allowed"),
        ({"image_kwargs": {"no_such_arg": 1}}, r"model.image_kwargs = .*not accepted by timm model 'test_vit'"),
        ({"text_config": {"n_layer": 2}}, r"model.text_config.n_layer is not a field of DistilBertConfig"),
        ({"text_config": {"dim": 130, "n_heads": 4}}, r"model.text_config = .* gives an invalid distilbert"),
        (
            {"text_config": {"max_position_embeddings": 16}},
            r"data.max_text_len = 32 exceeds .*max_position_embeddings = 16",
        ),
        ({"image_checkpoint": "weights.safetensors", "image_pretrained": False}, r"model.image_pretrained = false"),
    ],
)
def test_bad_model_config_is_usage_error(changes, pattern):
    with pytest.raises(UsageError, match=pattern):
        build_model(quickstart_cfg(**changes), VOCAB, PAD, max_len=MAX_LEN)


@pytest.mark.parametrize("locked", ["image", "text"])
def test_lock_freezes_tower_but_not_projections(locked):
    cfg = quickstart_cfg(image_model="test_resnet", **{f"lock_{locked}": True})
    model = build_model(cfg, VOCAB, PAD).train()
    frozen, trained = (
        (model.image_tower, model.text_tower) if locked == "image" else (model.text_tower, model.image_tower)
    )
    assert not frozen.training and trained.training
    running_means = {k: v.clone() for k, v in model.image_tower.state_dict().items() if k.endswith("running_mean")}
    image_features, text_features = model(torch.randn(4, 3, 64, 64), token_batch(4))
    (image_features @ text_features.T).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())
    assert all(p.grad is not None for p in trained.parameters())
    assert model.image_proj.weight.grad is not None and model.text_proj.weight.grad is not None
    bn_unchanged = all(torch.equal(v, model.image_tower.state_dict()[k]) for k, v in running_means.items())
    assert bn_unchanged == (locked == "image")


def test_grad_checkpointing_recomputes_and_keeps_outputs_and_grads():
    cfg = no_dropout(quickstart_cfg())
    plain = build_model(cfg, VOCAB, PAD)
    ckpt = build_model(cfg.model_copy(update={"grad_checkpointing": True}), VOCAB, PAD)
    ckpt.load_state_dict(plain.state_dict())
    assert not plain.image_tower.grad_checkpointing and not plain.text_tower.grad_checkpointing
    assert ckpt.image_tower.grad_checkpointing and ckpt.text_tower.grad_checkpointing
    images, ids = torch.randn(4, 3, 64, 64), token_batch(4)
    results = []
    for model in (plain, ckpt):
        calls = {"image": 0, "text": 0}
        # pre-hooks on inner modules: HF checkpoints a layer's forward (not __call__) and a recompute stops early
        model.image_tower.blocks[0].register_forward_pre_hook(
            lambda *_, calls=calls: calls.__setitem__("image", calls["image"] + 1)
        )
        model.text_tower.encoder.transformer.layer[0].attention.register_forward_pre_hook(
            lambda *_, calls=calls: calls.__setitem__("text", calls["text"] + 1)
        )
        image_features, text_features = model(images, ids)
        (image_features @ text_features.T).logsumexp(1).sum().backward()
        results.append((image_features, text_features, {n: p.grad for n, p in model.named_parameters()}, calls))
    (img0, txt0, grads0, calls0), (img1, txt1, grads1, calls1) = results
    assert calls0 == {"image": 1, "text": 1} and calls1 == {"image": 2, "text": 2}  # recomputed in backward
    torch.testing.assert_close(img1, img0, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(txt1, txt0, atol=1e-6, rtol=1e-5)
    for name, grad in grads0.items():
        torch.testing.assert_close(grads1[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_pooling_cls_and_mean_differ_and_mean_ignores_padding():
    torch.manual_seed(0)
    mean_model = build_model(quickstart_cfg(), VOCAB, PAD).eval()
    cls_model = build_model(quickstart_cfg(text_pooling="cls"), VOCAB, PAD).eval()
    cls_model.load_state_dict(mean_model.state_dict())
    short = torch.tensor([[101, 7, 8, 9, 102]])
    batch = torch.cat([torch.cat([short, torch.zeros(1, 11, dtype=torch.long)], 1), torch.arange(1, 17)[None]])
    with torch.no_grad():
        for model in (mean_model, cls_model):
            # row 0 of `batch` carries 11 pad columns (kept because row 1 is long): they must not matter
            torch.testing.assert_close(model.encode_text(batch)[:1], model.encode_text(short), atol=1e-6, rtol=0)
        tower = mean_model.text_tower
        hidden = tower.encoder(input_ids=batch, attention_mask=(batch != PAD).long()).last_hidden_state
        torch.testing.assert_close(tower(batch)[0], hidden[0, :5].mean(0), atol=1e-6, rtol=0)
        assert not torch.allclose(mean_model.encode_text(batch), cls_model.encode_text(batch), atol=1e-3)


def test_channels_last_gives_same_features():
    torch.manual_seed(0)
    plain = build_model(quickstart_cfg(image_model="test_resnet"), VOCAB, PAD).eval()
    fast = build_model(quickstart_cfg(image_model="test_resnet", channels_last=True), VOCAB, PAD).eval()
    fast.load_state_dict(plain.state_dict())
    conv = next(m for m in fast.image_tower.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast.encode_image(images), plain.encode_image(images), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_image_checkpoint_loads_local_weights(tmp_path, fmt):
    torch.manual_seed(123)
    source = timm.create_model("test_vit", num_classes=1000)  # a classifier checkpoint: the head is dropped
    state = source.state_dict()
    if fmt == "safetensors":
        path = tmp_path / "vit.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "vit.pth"
        torch.save({"state_dict": state, "epoch": 3}, path)
    model = build_model(quickstart_cfg(image_pretrained=True, image_checkpoint=str(path)), VOCAB, PAD)
    loaded = model.image_tower.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("head.")}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_image_checkpoint_errors_name_the_key(tmp_path):
    wrong = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=0).state_dict(), str(wrong))
    for ref, pattern in [
        (str(wrong), r"does not fit timm model 'test_vit'"),
        (str(tmp_path / "missing.safetensors"), r"no such file"),
        (str(tmp_path), r"is a folder without model.safetensors"),
    ]:
        with pytest.raises(UsageError, match=f"model.image_checkpoint = '{ref}'.*{pattern}"):
            build_model(quickstart_cfg(image_pretrained=True, image_checkpoint=ref), VOCAB, PAD)


def test_model_is_a_module_with_the_contract_api():
    model = build_model(quickstart_cfg(), VOCAB, PAD)
    assert isinstance(model, CLIPModel) and isinstance(model, torch.nn.Module)
    assert model.image_proj.bias is None and model.text_proj.bias is None


def test_bert_tower_has_no_unused_parameters():
    """DDP (find_unused_parameters=False) fails on parameters without gradient, e.g. BERT's pooler head."""
    cfg = quickstart_cfg(
        text_model="bert",
        text_config={"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
    )
    model = build_model(cfg, VOCAB, PAD)
    model.encode_text(token_batch(2)).sum().backward()
    assert [n for n, p in model.text_tower.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("locked", ["image", "text"])
def test_locked_checkpointed_tower_builds_no_graph(locked):
    """A locked tower with gradient checkpointing is neither recomputed nor back-propagated through: its layers
    run once per step, and its output carries no graph (only the projection above it trains)."""
    cfg = quickstart_cfg(grad_checkpointing=True, **{f"lock_{locked}": True})
    model = build_model(cfg, VOCAB, PAD).train()
    tower = model.image_tower if locked == "image" else model.text_tower
    outputs, calls = [], {"layer": 0}
    tower.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
    inner = (
        model.image_tower.blocks[0] if locked == "image" else model.text_tower.encoder.transformer.layer[0].attention
    )
    inner.register_forward_pre_hook(lambda *_: calls.__setitem__("layer", calls["layer"] + 1))
    image_features, text_features = model(torch.randn(4, 3, 64, 64), token_batch(4))
    (image_features @ text_features.T).logsumexp(1).sum().backward()
    assert not outputs[0].requires_grad and outputs[0].grad_fn is None
    assert calls["layer"] == 1
    projection = model.image_proj if locked == "image" else model.text_proj
    assert projection.weight.grad is not None and all(p.grad is None for p in tower.parameters())


@pytest.mark.parametrize(
    ("capability", "expected"), [((7, 0), "no"), ((7, 5), "no"), ((8, 0), "bf16"), ((9, 0), "bf16")]
)
def test_auto_precision_takes_bf16_only_with_native_support(monkeypatch, capability, expected):
    from clipctl.recipe import TrainConfig
    from clipctl.train.devices import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # V100/T4 answer True: emulation
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)  # no launcher's choice
    assert resolve_precision(TrainConfig(precision="auto"), on_cuda=True).value == expected


@pytest.mark.parametrize("preset", [None, ":16:8"])
def test_deterministic_training_sets_the_cublas_workspace(monkeypatch, preset):
    from clipctl.recipe import TrainConfig
    from clipctl.train.devices import build_accelerator

    if preset is None:
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    else:
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", preset)
    build_accelerator(TrainConfig(device="cpu", precision="no", deterministic=True))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == (preset or ":4096:8")
