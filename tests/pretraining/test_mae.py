import json

import numpy as np
import pytest
import torch

from s2policy.encoders.backbones import build_backbone
from s2policy.encoders.s2 import EncoderConfig, build_encoder
from s2policy.features.cache import fingerprint
from s2policy.pretraining.frames import heldout_split, load_frames
from s2policy.pretraining.mae import MaskedAutoencoder, random_masking, s2_tiles
from s2policy.pretraining.plateau import Plateau, StopConfig
from s2policy.pretraining.train import PretrainConfig, pretrain
from s2policy.task import TaskConfig
from s2policy.training.trainer import WarmupStableDecay

TINY_TASK = TaskConfig(env={"image_size": (32, 32), "shadow_size": 0})


def tiny_cfg(store, tmp_path, run="run", **kw):
    """A vit_nano MAE run on the demo store, written under ``tmp_path``."""
    base = dict(
        backbone="vit_nano",
        img_size=32,
        datasets=[str(store)],
        steps=3,
        batch_size=8,
        decoder_dim=32,
        decoder_heads=2,
        device="cpu",
        name=f"mae_{run}",
        weights_dir=str(tmp_path / "w"),
        output_dir=str(tmp_path / run),
        task=TINY_TASK,
    )
    return PretrainConfig(**{**base, **kw})


def mae(ratio=0.75, backbone="vit_nano"):
    vit, _ = build_backbone(backbone)
    return MaskedAutoencoder(vit.requires_grad_(True), ratio, decoder_dim=32, decoder_heads=2)


def test_masking_ratio_and_restore():
    gen = torch.Generator().manual_seed(0)
    keep, mask, restore = random_masking(8, 16, 0.75, gen, torch.device("cpu"))
    assert keep.shape == (8, 4) and mask.shape == (8, 16) and restore.shape == (8, 16)
    assert (mask.sum(1) == 12).all()  # exactly 75 % masked per image
    for b in range(8):
        assert sorted(keep[b].tolist()) == torch.nonzero(mask[b] == 0).flatten().tolist()
    # Each image draws its own mask (one of 1820 sets; a shared one would give a single set).
    assert len({tuple(m.tolist()) for m in mask}) >= 7
    # Unshuffling real data: kept patches first, then placeholders, gathered by ``restore``
    # (as the decoder input is) puts every kept patch back at its own position.
    patches = torch.randn(8, 16, 5, generator=torch.Generator().manual_seed(1))
    kept = patches.gather(1, keep[..., None].expand(-1, -1, 5))
    placeholder = torch.full((8, 12, 5), float("nan"))
    unshuffled = torch.cat([kept, placeholder], 1).gather(1, restore[..., None].expand(-1, -1, 5))
    visible = mask == 0
    torch.testing.assert_close(unshuffled[visible], patches[visible], rtol=0, atol=0)
    assert unshuffled[~visible].isnan().all()  # placeholders exactly at the masked positions


def test_masking_ratio_is_rounded_and_keeps_a_patch():
    gen = torch.Generator().manual_seed(0)
    for n, ratio, n_keep in [(16, 0.5, 8), (49, 0.75, 12), (4, 0.9, 1)]:
        keep, mask, _ = random_masking(2, n, ratio, gen, torch.device("cpu"))
        assert keep.shape == (2, n_keep) and (mask.sum(1) == n - n_keep).all()


def test_decoder_sees_each_encoded_patch_at_its_own_position():
    """The forward pass's unshuffle: the decoder input at position ``i`` is the encoded token of
    patch ``i`` when it is visible, the mask token otherwise (plus position embeddings)."""
    model = mae().eval()
    images = torch.rand(2, 3, 32, 32)
    seen = {}
    hook = model.decoder.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    with torch.no_grad():
        _, _, mask = model(images, torch.Generator().manual_seed(3))
        keep, mask2, _ = random_masking(
            2, model.n_patches, model.mask_ratio, torch.Generator().manual_seed(3), images.device
        )
        tokens = model.decoder_embed(model.encode(images, keep)[:, model.vit.num_prefix_tokens :])
    hook.remove()
    torch.testing.assert_close(mask, mask2)
    x = seen["x"] - model.decoder_pos
    for b in range(2):
        torch.testing.assert_close(x[b, keep[b]], tokens[b])
        masked = mask[b].bool()
        torch.testing.assert_close(x[b, masked], model.mask_token[0].expand(int(masked.sum()), -1))


def test_patch_bookkeeping():
    model = mae()
    images = torch.rand(2, 3, 32, 32)
    patches = model.patchify(images)
    assert patches.shape == (2, 16, 8 * 8 * 3)
    torch.testing.assert_close(model.unpatchify(patches), images)
    loss, pred, mask = model(images, torch.Generator().manual_seed(0))
    assert pred.shape == patches.shape and mask.sum() == 2 * 12 and loss.ndim == 0
    masked, recon = model.reconstruct(images, torch.Generator().manual_seed(0))
    m = model.unpatchify(mask[..., None].expand_as(patches)) == 0
    torch.testing.assert_close(recon[m], images[m])  # visible patches pasted back unchanged


def test_registers_backbone_and_s2_tiles():
    model = mae(backbone="vit_nano_reg")
    loss, _, _ = model(torch.rand(2, 3, 28, 28))
    assert torch.isfinite(loss)
    assert s2_tiles(torch.rand(2, 3, 40, 40), 64, 32).shape == (8, 3, 32, 32)


def test_reconstruction_loss_falls_on_a_tiny_dataset(tmp_path, demo_store):
    cfg = tiny_cfg(
        demo_store,
        tmp_path,
        scales=[32, 64],
        steps=80,
        batch_size=32,
        lr=3e-3,
        warmup_steps=5,
        log_every=10,
        name="mae_test",
    )
    path = pretrain(cfg)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert losses[-1] < 0.7 * losses[0], losses
    assert (tmp_path / "run" / "loss.png").is_file()
    assert (tmp_path / "run" / "reconstruction.png").is_file()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["backbone"] == "vit_nano" and meta["frames"] > 0


def test_saved_weights_load_by_name_and_change_the_fingerprint(tmp_path, demo_store, monkeypatch):
    monkeypatch.setenv("S2POLICY_WEIGHTS_DIR", str(tmp_path / "w"))
    cfg = tiny_cfg(demo_store, tmp_path, name="mae_nano", weights_dir=None)
    pretrain(cfg)
    pretrained = build_encoder(
        EncoderConfig(backbone="vit_nano", scales=(32, 64), weights="mae_nano")
    )
    random = build_encoder(EncoderConfig(backbone="vit_nano", scales=(32, 64)))
    assert pretrained.spec()["backbone"]["weights"] == "mae_nano"
    assert fingerprint("d", pretrained.spec(), "float32") != fingerprint(
        "d", random.spec(), "float32"
    )
    with pytest.raises(ValueError, match="trained for backbone 'vit_nano', not 'vit_micro'"):
        build_encoder(EncoderConfig(backbone="vit_micro", scales=(64,), weights="mae_nano"))


def test_resume_continues_to_the_same_weights(tmp_path, demo_store):
    def cfg(out, steps, resume=False):
        return tiny_cfg(
            demo_store,
            tmp_path,
            run=out,
            steps=steps,
            ckpt_every=4,
            log_every=2,
            warmup_steps=2,
            resume=resume,
        )

    full = pretrain(cfg("full", 8))

    class Interrupt(Exception):
        pass

    def stop_at_6(record):
        if record["step"] == 6:
            raise Interrupt

    with pytest.raises(Interrupt):  # killed after the step-4 checkpoint
        pretrain(cfg("cut", 8), on_log=stop_at_6)
    resumed = pretrain(cfg("cut", 8, resume=True))
    from safetensors.torch import load_file

    a, b = load_file(str(full)), load_file(str(resumed))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_random_rollout_frames_and_empty_frame_set(tmp_path):
    from s2policy.data.store import ReplayBuffer

    ReplayBuffer.create(tmp_path / "empty.zarr", attrs={"cameras": ["front"]})
    empty = PretrainConfig(datasets=[str(tmp_path / "empty.zarr")], random_frames=0, task=TINY_TASK)
    with pytest.raises(ValueError, match="no frames to pretrain on"):
        load_frames(empty)
    rollouts = PretrainConfig(datasets=[], random_frames=10, task=TINY_TASK)
    frames = load_frames(rollouts)
    assert frames.images.shape == (10, 32, 32, 3) and frames.images.dtype == np.uint8
    assert len(frames.episodes) == 10 and (frames.episodes >= 1_000_000).all()


@pytest.mark.parametrize(
    "kw, match", [({"scales": [48]}, "multiples"), ({"mask_ratio": 1.0}, "mask_ratio")]
)
def test_bad_pretrain_config(kw, match):
    with pytest.raises(ValueError, match=match):
        PretrainConfig(img_size=32, **kw)


# ---------------------------------------------------------------- held-out loss and plateau
def test_heldout_split_holds_out_whole_episodes_disjoint_from_training(demo_store):
    frames = load_frames(PretrainConfig(datasets=[str(demo_store)], task=TINY_TASK))
    train, held = frames.split(0.34, seed=3)
    assert len(np.intersect1d(train, held)) == 0 and len(train) + len(held) == len(frames)
    held_eps = set(frames.episodes[held].tolist())
    assert held_eps and held_eps.isdisjoint(frames.episodes[train].tolist())  # whole episodes
    assert len(held_eps) == 2  # 34 % of 6 episodes
    again, _ = frames.split(0.34, seed=3)
    np.testing.assert_array_equal(train, again)  # a seed's split is reproducible
    assert len(heldout_split(np.arange(5), 0.0, 0)[1]) == 0
    assert len(heldout_split(np.arange(5), 0.01, 0)[1]) == 1  # at least one episode
    with pytest.raises(ValueError, match="val_ratio"):
        heldout_split(np.arange(5), 1.0, 0)


def test_plateau_rule_counts_against_the_last_improvement_that_counted():
    p = Plateau(patience=3, min_rel_improvement=0.01)
    fired = [p.update(x, step) for step, x in enumerate([1.0, 0.9, 0.895, 0.893, 0.892])]
    assert fired == [False, False, False, False, True]  # 3 evaluations under 1 % below 0.9
    assert p.best == 0.892 and p.best_step == 4
    slow = Plateau(patience=3, min_rel_improvement=0.01)
    # 0.6 % per evaluation: each pair adds up to > 1 % against the anchor, so it never fires
    assert not any(slow.update(0.994**k, k) for k in range(30))
    again = Plateau(3, 0.01)
    again.load(p.state())
    assert again.update(0.9, 5) and again.state() == {**p.state(), "since": 4}
    with pytest.raises(ValueError, match="diverged"):
        Plateau(3, 0.01).update(float("nan"), 7)
    assert "plateau when 4 held-out evaluations" in StopConfig(patience=4).rule()
    with pytest.raises(ValueError, match="stop.patience"):
        StopConfig(patience=-1)


def test_warmup_stable_decay_factor_and_its_saved_state():
    f = WarmupStableDecay(warmup=4)
    assert [f(s) for s in (0, 2, 4, 100)] == [0.0, 0.5, 1.0, 1.0]
    f.decay(100, 120)
    assert [f(s) for s in (100, 110, 120, 130)] == [1.0, 0.5, 0.0, 0.0]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    g = WarmupStableDecay(warmup=4)
    torch.optim.lr_scheduler.LambdaLR(opt, g).load_state_dict(sched.state_dict())
    assert (g.start, g.end) == (100, 120)  # a resumed run keeps its cooldown


def test_pretraining_ends_at_a_plateau_and_records_the_heldout_curve(tmp_path, demo_store):
    # min_rel_improvement 0.99: no evaluation can improve enough, so the 2nd one fires
    stop = StopConfig(patience=1, min_rel_improvement=0.99, cooldown_fraction=0.5)
    cfg = tiny_cfg(demo_store, tmp_path, steps=60, val_every=4, val_frames=16, val_ratio=0.34,
                   log_every=4, warmup_steps=2, schedule="constant", stop=stop)  # fmt: skip
    path = pretrain(cfg)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["stopped"] == "plateau" and meta["plateau_step"] == 8
    assert meta["steps"] == 12 and meta["step_budget"] == 60  # 8 + a cooldown of 0.5 x 8
    assert [s for s, _ in meta["heldout_curve"]] == [4, 8, 12]
    assert meta["heldout_episodes"] == 2 and meta["heldout_frames"] == 16
    assert meta["epochs"] == pytest.approx(12 * 8 / meta["train_frames"])
    assert "plateau when 1 held-out evaluations" in meta["stop_rule"] and meta["wall_s"] > 0
    assert path.with_suffix(".loss.png").is_file()
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").open()]
    lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
    assert lrs[8] == pytest.approx(cfg.lr) and lrs[12] == pytest.approx(0.0)  # the cooldown


def test_a_resumed_run_keeps_its_plateau_and_ends_at_the_same_weights(tmp_path, demo_store):
    def cfg(run, resume=False):
        return tiny_cfg(demo_store, tmp_path, run=run, steps=40, val_every=4, val_frames=16,
                        val_ratio=0.34, log_every=4, ckpt_every=4, warmup_steps=2,
                        schedule="constant", resume=resume,
                        stop=StopConfig(patience=1, min_rel_improvement=0.99,
                                        cooldown_fraction=0.75))  # fmt: skip

    full = pretrain(cfg("full"))

    class Interrupt(Exception):
        pass

    def stop_at_12(record):
        if record["step"] == 12:  # after the plateau (step 8), inside the cooldown
            raise Interrupt

    with pytest.raises(Interrupt):
        pretrain(cfg("cut"), on_log=stop_at_12)
    resumed = pretrain(cfg("cut", resume=True))
    from safetensors.torch import load_file

    a, b = load_file(str(full)), load_file(str(resumed))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    meta = json.loads(resumed.with_suffix(".json").read_text())
    assert meta["plateau_step"] == 8 and meta["steps"] == 14  # 8 + 0.75 x 8, inside a budget of 40


def test_without_a_plateau_the_budgets_last_part_is_the_cooldown(tmp_path, demo_store):
    cfg = tiny_cfg(demo_store, tmp_path, steps=20, val_every=4, val_frames=8, val_ratio=0.34,
                   log_every=4, warmup_steps=2, schedule="constant",
                   stop=StopConfig(patience=0, cooldown_fraction=0.5))  # fmt: skip
    meta = json.loads(pretrain(cfg).with_suffix(".json").read_text())
    assert meta["stopped"] == "budget" and meta["plateau_step"] is None
    assert meta["cooldown_step"] == 12 and meta["steps"] == 20  # the first evaluation past 10
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (tmp_path / "run/metrics.jsonl").open())}
    assert lrs[8] == lrs[12] == pytest.approx(cfg.lr) and lrs[20] == pytest.approx(0.0)
    assert lrs[16] == pytest.approx(cfg.lr * 4 / 8)
