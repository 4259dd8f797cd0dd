import json

import pytest
import s2wrapper
import torch

from s2policy.encoders.backbones import build_backbone
from s2policy.encoders.s2 import EncoderConfig, S2Encoder, build_encoder


def encoder(backbone="vit_nano", scales=(32, 64), **kw):
    return build_encoder(EncoderConfig(backbone=backbone, scales=scales, **kw))


@pytest.mark.parametrize(
    "backbone, scales",
    [("vit_nano", (32, 64)), ("vit_nano", (32, 64, 96)), ("vit_nano_reg", (28, 56, 84))],
)
@pytest.mark.parametrize("grid", ["smallest", "largest"])
def test_matches_reference_s2wrapper(backbone, scales, grid):
    enc = encoder(backbone, scales, pool="tokens", antialias=False, output_grid=grid)
    torch.manual_seed(0)
    images = torch.rand(3, 3, scales[0], scales[0])
    ours = enc(images)
    reference = s2wrapper.forward(
        enc.backbone.forward_features,
        (images - enc.mean) / enc.std,
        img_sizes=list(scales),
        num_prefix_token=enc.num_prefix_tokens,
        resize_output_to_idx=0 if grid == "smallest" else len(scales) - 1,
    )
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_all_tiles_of_all_scales_go_through_one_forward():
    enc = encoder(scales=(32, 64, 96))
    batches = []
    enc.backbone.patch_embed.register_forward_hook(lambda m, i, o: batches.append(i[0].shape[0]))
    enc(torch.rand(2, 3, 32, 32))
    assert batches == [2 * (1 + 4 + 9)]


def test_pooled_outputs_agree_with_token_output():
    images = torch.rand(2, 3, 32, 32)
    tokens = encoder(pool="tokens")(images)
    cls, mean = encoder(pool="cls")(images), encoder(pool="mean")(images)
    assert cls.shape == mean.shape == (2, 2 * 48)
    torch.testing.assert_close(cls, tokens[:, 0])
    torch.testing.assert_close(mean, tokens[:, 1:].mean(dim=1))


def test_three_scales_shapes_and_grids():
    enc = encoder(scales=(32, 64, 96), pool="tokens")
    assert enc.out_dim == 3 * 48
    assert enc(torch.rand(1, 3, 32, 32)).shape == (1, 1 + 16, 144)
    big = encoder(scales=(32, 64, 96), pool="tokens", output_grid="largest")
    assert big(torch.rand(1, 3, 32, 32)).shape == (1, 1 + 144, 144)


def test_non_square_images_keep_aspect_with_a_tile_grid_per_axis():
    enc = encoder(scales=(32, 64), pool="tokens")
    assert enc.tile_grid(48, 80, 32) == (1, 2)  # 80/48 = 1.67 -> 2 tiles across
    assert enc.tile_grid(48, 80, 64) == (2, 3)
    assert enc.tile_grid(96, 32, 64) == (6, 2)
    out = enc(torch.rand(2, 3, 48, 80))
    assert out.shape == (2, 1 + 4 * 8, 96) == (2, *enc.output_shape(48, 80))
    wide = encoder(scales=(32, 64), pool="tokens", output_grid="largest")
    assert wide(torch.rand(1, 3, 48, 80)).shape == (1, 1 + 8 * 12, 96)  # 2 x 3 tiles of 4 x 4


def test_register_tokens_are_prefix_tokens_averaged_over_tiles():
    enc = encoder("vit_nano_reg", (28, 56), pool="tokens")
    assert enc.num_prefix_tokens == 5  # class + 4 registers
    images = torch.rand(2, 3, 28, 28)
    prefix, _ = enc.forward_maps(images)
    assert prefix.shape == (2, 5, 2 * 48)
    big = torch.nn.functional.interpolate(
        (images - enc.mean) / enc.std, size=56, mode="bicubic", antialias=True
    )
    tiles = big.unfold(2, 28, 28).unfold(3, 28, 28).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 28, 28)
    expected = enc.backbone.forward_features(tiles)[:, :5].reshape(2, 4, 5, 48).mean(dim=1)
    torch.testing.assert_close(prefix[..., 48:], expected, atol=1e-5, rtol=1e-5)


def test_antialias_changes_downsampled_inputs_only_when_on():
    images = torch.rand(1, 3, 96, 96)  # downsampled to 32: aliasing matters
    on, off = encoder(antialias=True)(images), encoder(antialias=False)(images)
    assert not torch.allclose(on, off, atol=1e-4)


def test_spec_is_json_and_determines_the_output():
    spec = encoder().spec()
    assert json.loads(json.dumps(spec)) == spec
    assert spec["scales"] == [32, 64] and spec["backbone"]["name"] == "vit_nano"
    for kw in (
        {"scales": (32,)},
        {"pool": "mean"},
        {"antialias": False},
        {"output_grid": "largest"},
        {"init_seed": 1},
    ):
        assert encoder(**kw).spec() != spec, kw
    assert encoder().spec() == spec


def test_gflops_grow_with_the_tiles():
    single, s2 = encoder(scales=(32,)), encoder(scales=(32, 64))
    ratio = s2.gflops_per_image() / single.gflops_per_image()
    assert 4.5 < ratio < 5.5  # 1 + 4 tiles, plus a little resizing


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.rand(2, 32, 32, 3), r"\(B, 3, H, W\)"),
        (torch.rand(3, 32, 32), r"\(B, 3, H, W\)"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "floating point"),
    ],
)
def test_bad_images_raise(images, match):
    with pytest.raises(ValueError, match=match):
        encoder()(images)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"scales": (32, 48)}, "multiples of base_size 32"),
        ({"scales": ()}, "scales"),
        ({"pool": "max"}, "pool must be one of"),
        ({"output_grid": "middle"}, "output_grid"),
        ({"backbone": "vit_q"}, "unknown backbone 'vit_q'; known: vit_nano"),
    ],
)
def test_bad_encoder_config(kw, match):
    with pytest.raises(ValueError, match=match):
        EncoderConfig(**{"backbone": "vit_nano", "scales": (32, 64), **kw})


def test_wrapper_checks_the_backbone_it_gets():
    model, cfg = build_backbone("vit_nano")
    with pytest.raises(ValueError, match="differs from the backbone's tile size"):
        S2Encoder(model, cfg, scales=(64, 128), base_size=64)
    with pytest.raises(ValueError, match="no class token"):
        S2Encoder(model, {**cfg, "num_prefix_tokens": 0, "name": "x"}, scales=(32,))


def test_weights_named_after_the_backbone_for_a_sweep_over_rungs():
    from s2policy.encoders.s2 import EncoderConfig

    assert (
        EncoderConfig(backbone="vit_mini", weights="mae4c_{backbone}").weights == "mae4c_vit_mini"
    )
    assert EncoderConfig(backbone="none", weights="mae4c_{backbone}").weights is None
    assert EncoderConfig(backbone="oracle", weights="mae4c_{backbone}").weights is None
