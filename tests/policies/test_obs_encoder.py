"""The observation heads: SpatialSoftmax keypoints on token grids (``policy.spatial_head``)."""

import pytest
import torch

from s2policy.policies.mlp import MLPPolicyConfig
from s2policy.policies.obs_encoder import ObsEncoder, SpatialSoftmax


def hot_token_map(prefix: int, rows: int, cols: int, hot: tuple[int, int], dim: int = 8):
    """One image's tokens: zeros, channel 0 large at grid cell ``hot`` (row, col)."""
    tokens = torch.zeros(1, prefix + rows * cols, dim)
    tokens[0, prefix + hot[0] * cols + hot[1], 0] = 10.0
    return tokens


def sharp_head(prefix: int, rows: int, cols: int, dim: int = 8) -> SpatialSoftmax:
    """A head whose one keypoint scores channel 0 (after the LayerNorm) at a low temperature."""
    head = SpatialSoftmax(dim, (prefix, rows, cols), d=4, keypoints=1)
    with torch.no_grad():
        head.score.weight.zero_()
        head.score.weight[0, 0] = 1.0
        head.score.bias.zero_()
        head.log_temperature.fill_(-4.0)
    return head


@pytest.mark.parametrize("hot", [(0, 0), (1, 2), (0, 1)])
def test_keypoint_is_the_expected_grid_position_in_row_major_order(hot):
    """A 2 x 3 grid after one prefix token: the keypoint of a map that is hot in one cell is
    that cell's (x, y) in [-1, 1] — x from the column, y from the row."""
    head = sharp_head(1, 2, 3)
    kp = head.keypoints(hot_token_map(1, 2, 3, hot))
    xs, ys = torch.linspace(-1, 1, 3), torch.linspace(-1, 1, 2)
    torch.testing.assert_close(kp[0, 0], torch.stack([xs[hot[1]], ys[hot[0]]]), atol=1e-3, rtol=0)


def test_prefix_tokens_are_not_scored_but_reach_the_output():
    """The class token is never a keypoint location (a hot prefix token leaves the keypoints
    where they were) but it changes the output."""
    head = sharp_head(1, 2, 3)
    tokens = hot_token_map(1, 2, 3, (1, 1))
    moved = tokens.clone()
    moved[0, 0, 0] = 50.0
    torch.testing.assert_close(head.keypoints(moved), head.keypoints(tokens))
    assert (head(moved) - head(tokens)).abs().max() > 1e-3


def test_softmax_head_sees_where_attention_pooling_does_not():
    """Moving the same content to another grid cell changes the SpatialSoftmax embedding (the
    keypoints move); the attention head has no positional term of its own."""
    torch.manual_seed(0)
    shapes = {"front": (1 + 16, 8)}
    layouts = {"front": (1, 4, 4)}
    a = hot_token_map(1, 4, 4, (0, 0))[:, None]
    b = hot_token_map(1, 4, 4, (3, 2))[:, None]
    state = torch.zeros(1, 1, 3)
    soft = ObsEncoder(shapes, 3, 1, 16, 4, "softmax", 8, layouts)
    att = ObsEncoder(shapes, 3, 1, 16, 4, "attention", 8, layouts)
    assert (
        soft({"front": a, "state": state}) - soft({"front": b, "state": state})
    ).abs().max() > 1e-3
    torch.testing.assert_close(
        att({"front": a, "state": state}), att({"front": b, "state": state}), atol=1e-5, rtol=0
    )


def test_bad_spatial_head_settings_are_refused_in_one_sentence():
    with pytest.raises(ValueError, match="unknown spatial_head 'keypoint'"):
        MLPPolicyConfig(spatial_head="keypoint")
    with pytest.raises(ValueError, match="keypoints must be >= 1"):
        MLPPolicyConfig(spatial_head="softmax", keypoints=0)
    with pytest.raises(ValueError, match="needs the token grid of 'front'"):
        ObsEncoder({"front": (17, 8)}, 3, 1, 16, 4, "softmax", 8, None)
    with pytest.raises(ValueError, match="has 17 tokens, not 1 prefix \\+ 3 x 3 grid"):
        ObsEncoder({"front": (17, 8)}, 3, 1, 16, 4, "softmax", 8, {"front": (1, 3, 3)})
