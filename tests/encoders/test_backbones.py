import json

import pytest
import torch
from safetensors.torch import save_file

from s2policy.encoders import backbones
from s2policy.encoders.backbones import BACKBONES, build_backbone


def test_registry_has_the_paper_sizes_and_registers():
    for name in ("vit_t", "vit_s", "vit_b", "vit_l", "vit_h", "vit_s_reg"):
        assert name in BACKBONES
    assert "reg4" in BACKBONES["vit_s_reg"].timm_name


@pytest.mark.parametrize(
    "name, width, prefix, mean",
    [("vit_t", 192, 1, [0.5, 0.5, 0.5]), ("vit_s_reg", 384, 5, [0.485, 0.456, 0.406])],
)
def test_real_architectures_build_with_their_preprocessing(name, width, prefix, mean):
    _, cfg = build_backbone(name)
    assert cfg["embed_dim"] == width and cfg["num_prefix_tokens"] == prefix
    assert cfg["mean"] == pytest.approx(mean)  # from timm's pretrained config of the weights
    assert cfg["interpolation"] == "bicubic" and cfg["weights"] == "random"
    assert cfg["params"] > 5e6


def test_random_init_is_seeded():
    a, b, c = (build_backbone("vit_nano", init_seed=s)[1]["weights_digest"] for s in (0, 0, 1))
    assert a == b != c


def test_frozen_and_in_eval_mode():
    model, _ = build_backbone("vit_nano")
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weight_files_load(tmp_path, suffix):
    source, source_cfg = build_backbone("vit_nano", init_seed=7)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"model": state}, path)
    loaded, cfg = build_backbone("vit_nano", weights=str(path))
    assert cfg["weights_digest"] == source_cfg["weights_digest"]
    assert cfg["weights"] == str(path) and cfg["init_seed"] is None


def test_pickled_code_is_not_executed(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "extra": object()}, path)
    with pytest.raises(ValueError, match="weights-only.*safetensors"):
        build_backbone("vit_nano", weights=str(path))


def test_missing_weight_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass encoder.weights"):
        build_backbone("vit_nano", weights=str(tmp_path / "nope.safetensors"))


def test_weights_of_another_architecture_are_refused(tmp_path):
    other, _ = build_backbone("vit_micro")
    path = tmp_path / "micro.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="do not fit backbone 'vit_nano'.*size mismatch"):
        build_backbone("vit_nano", weights=str(path))


def test_project_pretrained_weights_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("S2POLICY_WEIGHTS_DIR", str(tmp_path))
    model, ref = build_backbone("vit_nano", init_seed=3)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(tmp_path / "mae_nano.safetensors"),
    )
    (tmp_path / "mae_nano.json").write_text(json.dumps({"backbone": "vit_nano"}))
    _, cfg = build_backbone("vit_nano", weights="mae_nano")
    assert cfg["weights_digest"] == ref["weights_digest"] and cfg["weights"] == "mae_nano"
    with pytest.raises(ValueError, match="trained for backbone 'vit_nano', not 'vit_micro'"):
        build_backbone("vit_micro", weights="mae_nano")
    with pytest.raises(FileNotFoundError, match="available: mae_nano"):
        build_backbone("vit_nano", weights="mae_other")


def test_hub_weights_offline_give_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda repo, filename: None)
    with pytest.raises(FileNotFoundError, match="never downloads at run time.*encoder.weights"):
        backbones.build_backbone("vit_t", weights="hub")
    with pytest.raises(ValueError, match="no hub weights"):
        backbones.build_backbone("vit_nano", weights="hub")


def test_hub_weights_from_the_local_cache(monkeypatch, tmp_path):
    model, ref = build_backbone("vit_t", init_seed=5)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    monkeypatch.setattr(
        "huggingface_hub.try_to_load_from_cache",
        lambda repo, filename: str(path) if filename == "model.safetensors" else None,
    )
    _, cfg = build_backbone("vit_t", weights="hub")
    assert cfg["weights_digest"] == ref["weights_digest"] and cfg["weights"] == "hub"


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'vit_q'; known: .*vit_t"):
        build_backbone("vit_q")


def test_tile_size_must_fit_the_patch():
    with pytest.raises(ValueError, match="multiple of its patch size 8"):
        build_backbone("vit_nano", img_size=36)


def test_the_cpu_ladder_rungs_are_ordered_by_flops():
    """vit_mini costs what vit_micro S² (64, 128) costs at one scale (within 25 %: the report's
    "equal FLOPs"); vit_midi about 4x vit_mini; shapes and widths as registered."""
    from s2policy.encoders.s2 import S2Encoder

    cost, params = {}, {}
    for name, width in (("vit_micro", 96), ("vit_mini", 192), ("vit_midi", 256)):
        model, cfg = build_backbone(name, None, img_size=64, init_seed=0)
        params[name] = sum(p.numel() for p in model.parameters())
        for scales in ((64,), (64, 128)):
            enc = S2Encoder(model, cfg, scales, 64)
            out = enc(torch.rand(2, 3, 64, 64))
            assert out.shape == (2, width * len(scales))
            cost[name, scales] = enc.gflops_per_image()
    s2_micro, mini, midi = (
        cost["vit_micro", (64, 128)],
        cost["vit_mini", (64,)],
        cost["vit_midi", (64,)],
    )
    assert cost["vit_micro", (64,)] < mini < midi
    assert max(s2_micro, mini) <= 1.25 * min(s2_micro, mini)
    assert 3.5 < midi / mini < 4.5
    assert params["vit_micro"] < params["vit_mini"] < params["vit_midi"]
