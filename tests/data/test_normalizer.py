import pytest
import torch

from s2policy.data.normalizer import Normalizer


def test_round_trip_and_ranges():
    torch.manual_seed(0)
    actions = torch.rand(200, 4) * torch.tensor([2.0, 10.0, 0.1, 1.0]) - 3
    actions[:, 3] = 0.25  # a constant dimension
    state = torch.randn(200, 3) * 5 + 2
    norm = Normalizer()
    norm.fit("action", actions, "limits")
    norm.fit("state", state, "gaussian")
    a = norm.normalize("action", actions)
    assert a[:, :3].min() == pytest.approx(-1, abs=1e-5) and a[:, :3].max() == pytest.approx(
        1, abs=1e-5
    )
    assert torch.isfinite(a).all() and torch.allclose(a[:, 3], torch.zeros(200))
    s = norm.normalize("state", state)
    assert s.mean(0).abs().max() < 1e-4 and (s.std(0, unbiased=False) - 1).abs().max() < 1e-4
    torch.testing.assert_close(norm.unnormalize("action", a), actions)
    back = Normalizer.from_state(norm.state())
    torch.testing.assert_close(back.unnormalize("state", s), state, atol=1e-4, rtol=1e-5)


def test_bad_fits():
    norm = Normalizer()
    with pytest.raises(ValueError, match="NaN or inf"):
        norm.fit("action", torch.tensor([[0.0], [float("nan")]]), "limits")
    with pytest.raises(ValueError, match="mode must be one of"):
        norm.fit("action", torch.zeros(3, 1), "minmax")
