"""The shared Trainer on a tiny noisy linear regression (no dataset, no encoder)."""

import json
from types import SimpleNamespace

import pytest
import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from s2policy.training.trainer import STATE_FILE, Trainer, read_state

TRUE_W = torch.tensor([[1.5, -2.0, 0.5, 3.0]])


class Interrupt(Exception):
    pass


def make_run(out, steps=12, ema=True, seed=0, **kw):
    """A Trainer whose steps draw from a data generator, a noise generator and (dropout) the
    global torch RNG, so a resume is exact only if all three are restored."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Dropout(0.02), torch.nn.Linear(4, 1))
    data_gen = torch.Generator().manual_seed(seed + 1)
    noise_gen = torch.Generator().manual_seed(seed + 2)
    schedule = dict(
        steps=steps, lr=0.05, weight_decay=0.0, warmup_steps=2, log_every=2, ckpt_every=4
    )
    schedule.update((k, kw.pop(k)) for k in list(kw) if k in schedule)
    args = dict(
        grad_clip=1.0,
        samples_per_step=16,
        ema=EMAModel(model.parameters(), power=0.75, use_ema_warmup=True) if ema else None,
        generators={
            "data_rng": data_gen,
            "noise_rng": noise_gen,
            "torch_rng": torch.default_generator,
        },
    )
    trainer = Trainer(model, SimpleNamespace(**schedule), out, **{**args, **kw})

    def next_batch():
        x = torch.randn(16, 4, generator=data_gen)
        return x, x @ TRUE_W.T

    def loss(batch):
        x, y = batch
        noise = 0.01 * torch.randn(y.shape, generator=noise_gen)
        return torch.nn.functional.mse_loss(model(x), y + noise)

    def checkpoint():
        return trainer.save_checkpoint(
            lambda d: save_file(dict(model.state_dict()), str(d / "model.safetensors"))
        )

    return trainer, model, next_batch, loss, checkpoint


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_loss_falls_and_each_window_is_logged(tmp_path):
    trainer, _, next_batch, loss, checkpoint = make_run(tmp_path, steps=60, log_every=10, lr=0.2)
    logged = []
    final = trainer.run(next_batch, loss, checkpoint, on_log=logged.append)
    assert final == tmp_path / "checkpoint" and trainer.step == 60
    recs = records(tmp_path)
    assert recs == logged
    assert [r["step"] for r in recs] == [10, 20, 30, 40, 50, 60]
    assert all(list(r) == ["step", "loss", "lr", "samples_per_s"] for r in recs)
    assert recs[-1]["loss"] < recs[0]["loss"] / 10, recs
    assert recs[-1]["lr"] == 0.0  # cosine schedule ends at zero
    assert all(r["samples_per_s"] > 0 for r in recs)


def test_warmup_then_cosine_learning_rate(tmp_path):
    trainer, _, next_batch, loss, _ = make_run(tmp_path, steps=10, warmup_steps=4)
    lrs = []
    for _ in range(10):
        batch = next_batch()
        trainer.train_step(lambda: loss(batch))  # noqa: B023 (called at once)
        lrs.append(trainer.scheduler.get_last_lr()[0])
    assert lrs[:4] == pytest.approx([0.0125, 0.025, 0.0375, 0.05])
    assert lrs[3:] == sorted(lrs[3:], reverse=True) and lrs[-1] == 0.0


def test_state_and_resume_continue_bit_identically(tmp_path):
    full, full_model, *rest = make_run(tmp_path / "full")
    full.run(*rest)

    def stop_at_6(record):
        if record["step"] == 6:
            raise Interrupt

    cut, _, *rest = make_run(tmp_path / "cut")
    with pytest.raises(Interrupt):
        cut.run(*rest, on_log=stop_at_6)
    ckpt = tmp_path / "cut" / "checkpoint"
    state = read_state(ckpt)
    assert list(state) == [
        "step",
        "optimizer",
        "scheduler",
        "data_rng",
        "noise_rng",
        "torch_rng",
        "ema",
    ]
    assert state["step"] == 4
    torch.manual_seed(123)  # the global RNG must come back from the checkpoint
    resumed, model, *rest = make_run(tmp_path / "cut", seed=7)  # other init, other generators
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    assert resumed.resume(state) == 4
    resumed.run(*rest)
    for key, value in full_model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    for a, b in zip(full.ema_weights().values(), resumed.ema_weights().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # metrics were kept up to the checkpoint (step 6, logged after it, is dropped and logged
    # again) and appended from there on, not rewritten
    assert [r["step"] for r in records(tmp_path / "cut")] == [2, 4, 6, 8, 10, 12]
    assert records(tmp_path / "cut")[-1] == {
        **records(tmp_path / "full")[-1],
        "samples_per_s": records(tmp_path / "cut")[-1]["samples_per_s"],
    }


def test_resume_without_the_generators_diverges(tmp_path):
    """The round trip above is not exact by accident: skipping the RNG states breaks it."""
    full, full_model, *rest = make_run(tmp_path / "full")
    full.run(*rest)
    cut, _, *rest = make_run(tmp_path / "cut", steps=4)
    cut.run(*rest)
    state = read_state(tmp_path / "cut" / "checkpoint")
    resumed, model, *rest = make_run(tmp_path / "cut", generators={})
    model.load_state_dict(load_file(str(tmp_path / "cut" / "checkpoint" / "model.safetensors")))
    resumed.resume(state)
    resumed.run(*rest)
    assert not torch.equal(model[1].weight, full_model[1].weight)


def test_checkpoint_schedule_and_state_file(tmp_path):
    trainer, _, next_batch, loss, checkpoint = make_run(tmp_path, steps=8, ema=False)
    calls = []

    def on_checkpoint():
        calls.append(trainer.step)
        return checkpoint()

    trainer.run(next_batch, loss, on_checkpoint)
    assert calls == [4, 8]  # the last step's checkpoint is written once
    files = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert files == ["model.safetensors", STATE_FILE]
    assert not (tmp_path / "checkpoint.new").exists()
    state = read_state(tmp_path / "checkpoint")
    assert "ema" not in state and state["step"] == 8
    # a run resumed at its last step only checkpoints again, and logs nothing
    again, _, next_batch, loss, checkpoint = make_run(tmp_path, steps=8, ema=False)
    again.resume(state)
    calls.clear()
    again.run(next_batch, loss, lambda: calls.append(again.step))
    assert calls == [8] and [r["step"] for r in records(tmp_path)] == [2, 4, 6, 8]


def test_validation_records_merge_into_the_log(tmp_path):
    trainer, model, next_batch, loss, checkpoint = make_run(tmp_path, steps=10, log_every=4)
    seen = []

    def validate():
        model.eval()  # the next step trains again
        seen.append(trainer.step)
        return {"val_loss": float(trainer.step)}

    def train_loss(batch):
        assert model.training
        return loss(batch)

    trainer.run(next_batch, train_loss, checkpoint, validate=validate, val_every=3)
    assert seen == [3, 6, 9, 10]
    recs = records(tmp_path)
    assert [r["step"] for r in recs] == [3, 4, 6, 8, 9, 10]
    assert recs[1]["step"] == 4 and "val_loss" not in recs[1]
    assert list(recs[0]) == ["step", "val_loss"]
    assert list(recs[-1]) == ["step", "loss", "lr", "samples_per_s", "val_loss"]


def test_ema_weights_differ_from_the_raw_ones_and_leave_them_alone(tmp_path):
    trainer, model, *rest = make_run(tmp_path, steps=20)
    initial = model[1].weight.detach().clone()
    trainer.run(*rest)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    ema = trainer.ema_weights()
    assert not torch.equal(ema["1.weight"], raw["1.weight"])
    # the average followed training: nearer the trained weights than the initial ones
    assert (ema["1.weight"] - raw["1.weight"]).norm() < (ema["1.weight"] - initial).norm()
    for key, value in model.state_dict().items():
        assert torch.equal(value, raw[key]), key
    assert make_run(tmp_path / "b", ema=False)[0].ema_weights() is None


def test_gradients_are_clipped(tmp_path):
    trainer, model, next_batch, loss, _ = make_run(tmp_path, grad_clip=1e-3, ema=False)
    trainer.train_step(lambda: 1e3 * loss(next_batch()))
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm == pytest.approx(1e-3, rel=1e-4)


def test_the_loss_runs_under_autocast(tmp_path):
    trainer, model, next_batch, _, _ = make_run(tmp_path, dtype="bfloat16", ema=False)
    dtypes = []

    def loss():
        x, y = next_batch()
        pred = model(x)
        dtypes.append(pred.dtype)
        return torch.nn.functional.mse_loss(pred.float(), y)

    trainer.train_step(loss)
    assert dtypes == [torch.bfloat16] and model[1].weight.dtype == torch.float32


def test_other_ranks_write_no_metrics(tmp_path):
    trainer, _, next_batch, loss, _ = make_run(tmp_path, rank=1)
    logged = []
    assert trainer.run(next_batch, loss, lambda: None, on_log=logged.append) is None
    assert logged == [] and not (tmp_path / "metrics.jsonl").exists()
