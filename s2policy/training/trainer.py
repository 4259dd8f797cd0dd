"""The optimization loop shared by policy training (``training/loop.py``) and MAE pretraining
(``pretraining/train.py``): AdamW with a cosine schedule and warm-up (or warm-up, a constant rate
and a linear decay started by the caller: :class:`WarmupStableDecay`), autocast, gradient
clipping, optional EMA, random generators saved and restored for a bit-exact resume, windowed
``metrics.jsonl`` logging, periodic checkpoints and an early end (:meth:`Trainer.end_early`).

What a step computes, which batch it sees and what a checkpoint holds besides the training
state belong to the caller; :meth:`Trainer.run` calls them back in a fixed order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

import numpy as np
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel

from s2policy.fileio import save_state, write_folder
from s2policy.runtime import autocast

#: The file of a checkpoint directory that holds the training state (optimizer, RNG, ...).
STATE_FILE = "training_state.pt"

Batch = TypeVar("Batch")
Record = dict[str, Any]


def read_state(checkpoint: str | Path) -> dict[str, Any]:
    """The training state of a checkpoint directory (no code runs: ``weights_only``)."""
    return torch.load(Path(checkpoint) / STATE_FILE, weights_only=True)


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop the records of steps after ``step`` from ``metrics.jsonl`` (they were logged after
    the checkpoint a run resumes from, and are logged again), atomically."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) > step:
                continue
        except json.JSONDecodeError:  # a line cut by a kill: logged again after the resume
            continue
        kept.append(line)
    if kept != lines:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)


#: Learning-rate schedules (``schedule`` of a config; policies use ``cosine``).
SCHEDULES = ("cosine", "constant")


class WarmupStableDecay:
    """The ``constant`` schedule's factor of the learning rate: a linear warm-up over ``warmup``
    steps, then 1 until :meth:`decay` starts a linear decay to 0 (warmup-stable-decay). A
    callable object, so ``LambdaLR`` saves its attributes with the scheduler's state."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start: int | None = None
        self.end: int | None = None

    def decay(self, start: int, end: int) -> None:
        self.start, self.end = start, end

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        if self.start is None:
            return 1.0
        return max(0.0, (self.end - step) / max(1, self.end - self.start))


class Schedule(Protocol):
    """The run-config fields a Trainer reads (``TrainConfig`` and ``PretrainConfig`` have them)."""

    steps: int
    lr: float
    weight_decay: float
    warmup_steps: int
    log_every: int
    ckpt_every: int


class Trainer:
    """Optimizer, schedule, EMA and random generators of one run, and the loop that drives them.

    AdamW over ``params`` (default: the model's trainable parameters) with ``cfg.lr``,
    ``cfg.weight_decay`` and ``betas``; a cosine schedule over ``cfg.steps`` after
    ``cfg.warmup_steps`` of linear warm-up (or, with ``cfg.schedule == "constant"``, a constant
    rate after the warm-up until :meth:`end_early` or the caller starts a linear decay);
    gradients clipped to norm ``grad_clip`` (0: off).
    ``generators`` name every random generator a step draws from; their states are saved under
    those names (``torch.default_generator`` stands for the global torch RNG). ``rank`` > 0
    writes no metrics and calls no ``on_log``. ``samples_per_step`` (batch size x world size)
    gives the throughput logged as ``rate_key``; the window's mean loss is ``loss_key``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: Schedule,
        out_dir: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: str = "float32",
        samples_per_step: int = 1,
        params: Iterable[torch.nn.Parameter] | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        grad_clip: float = 0.0,
        ema: EMAModel | None = None,
        generators: dict[str, torch.Generator] | None = None,
        rank: int = 0,
        loss_key: str = "loss",
        rate_key: str = "samples_per_s",
    ):
        self.model = model
        self.params = (
            [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
        )
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=betas
        )
        kind = getattr(cfg, "schedule", "cosine")
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}; known: {', '.join(SCHEDULES)}")
        self.lr_factor = WarmupStableDecay(cfg.warmup_steps) if kind == "constant" else None
        if self.lr_factor is not None:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        else:
            self.scheduler = get_cosine_schedule_with_warmup(
                self.optimizer, cfg.warmup_steps, cfg.steps
            )
        self.steps, self.log_every, self.ckpt_every = cfg.steps, cfg.log_every, cfg.ckpt_every
        #: The step an early end (:meth:`end_early`) set; ``None``: the budget ``cfg.steps``.
        self.end_at: int | None = None
        #: The caller's own state, saved with the training state (plain values and tensors).
        self.extra: dict[str, Any] = {}
        self.out_dir = Path(out_dir)
        self.device, self.dtype = torch.device(device), dtype
        self.samples_per_step, self.grad_clip = samples_per_step, grad_clip
        self.ema = ema
        self.generators = dict(generators or {})
        self.rank = rank
        self.loss_key, self.rate_key = loss_key, rate_key
        self.step = 0
        self._window: list[float] = []
        self._window_start = time.perf_counter()

    # -- state ---------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """``step``, ``optimizer``, ``scheduler``, each generator's state under its name, and
        ``ema`` when the run keeps an EMA."""
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }
        for name, gen in self.generators.items():
            state[name] = gen.get_state().cpu()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.end_at is not None:
            state["end_at"] = self.end_at
        if self.extra:
            state["extra"] = self.extra
        return state

    def end_early(self, steps_left: int) -> int:
        """End the run ``steps_left`` steps from now (or at its budget, if sooner); with the
        ``constant`` schedule the learning rate decays linearly to 0 over those steps. Returns
        the step the run ends at."""
        end = min(self.steps, self.step + max(0, steps_left))
        self.end_at = self.steps = end
        if self.lr_factor is not None:
            self.lr_factor.decay(self.step, end)
        return end

    def resume(self, state: dict[str, Any]) -> int:
        """Continue from :meth:`state` (the model's weights are the caller's); returns the step."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        for name, gen in self.generators.items():
            try:
                gen.set_state(state[name].to(gen.get_state().device))
            except RuntimeError as err:  # a CUDA generator's state does not fit a CPU one
                raise ValueError(
                    f"cannot resume: the checkpoint's random generator {name!r} was saved on "
                    f"another kind of device than {gen.device} ({err}); resume on the device it "
                    "was trained on (train.device=...) for an exact continuation"
                ) from err
        self.step = int(state["step"])
        self.extra = dict(state.get("extra", {}))
        if state.get("end_at") is not None:
            self.end_at = int(state["end_at"])
            self.steps = min(self.steps, self.end_at)
        return self.step

    def ema_weights(self) -> dict[str, torch.Tensor] | None:
        """A copy of the model's state dict with the EMA weights in place (``None``: no EMA)."""
        if self.ema is None:
            return None
        self.ema.store(self.model.parameters())
        self.ema.copy_to(self.model.parameters())
        weights = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.ema.restore(self.model.parameters())
        return weights

    def save_checkpoint(
        self,
        write: Callable[[Path], None],
        rerun: str = "resume with train.resume=true (the previous checkpoint is kept)",
    ) -> Path:
        """Write ``<out_dir>/checkpoint``: ``write(folder)`` adds the model's files, then the
        training state; built in ``checkpoint.new`` and swapped in whole. ``rerun``: what a full
        disk's sentence tells the user to do."""
        new, final = self.out_dir / "checkpoint.new", self.out_dir / "checkpoint"

        def write_all(folder: Path) -> None:
            write(folder)
            save_state(self.state(), folder / STATE_FILE)

        return write_folder(new, final, write_all, rerun)

    # -- one step ------------------------------------------------------------------------------

    def train_step(self, loss_fn: Callable[[], torch.Tensor]) -> float:
        """One optimizer step on ``loss_fn()`` (called under autocast); returns the loss."""
        self.model.train()
        with autocast(self.device, self.dtype):
            loss = loss_fn()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.step(self.model.parameters())
        self.step += 1
        value = loss.item()
        self._window.append(value)
        return value

    def window_record(self) -> Record:
        """``step``, the mean loss, lr and throughput since the last record; starts a new window."""
        elapsed = time.perf_counter() - self._window_start
        record = {
            "step": self.step,
            self.loss_key: float(np.mean(self._window)),
            "lr": self.scheduler.get_last_lr()[0],
            self.rate_key: len(self._window) * self.samples_per_step / elapsed,
        }
        self._window, self._window_start = [], time.perf_counter()
        return record

    def log(
        self,
        record: Record,
        metrics: TextIO | None,
        on_log: Callable[[Record], None] | None = None,
    ) -> None:
        """Append ``record`` to ``metrics.jsonl`` and pass it to ``on_log`` (rank 0 only)."""
        if self.rank != 0:
            return
        if metrics is not None:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
        if on_log is not None:
            on_log(record)

    # -- the loop ------------------------------------------------------------------------------

    def run(
        self,
        next_batch: Callable[[], Batch],
        loss: Callable[[Batch], torch.Tensor],
        on_checkpoint: Callable[[], Any],
        on_log: Callable[[Record], None] | None = None,
        validate: Callable[[], Record] | None = None,
        val_every: int = 1,
    ) -> Any:
        """Train from :attr:`step` to :attr:`steps` and return the final ``on_checkpoint()``.

        Each step draws ``next_batch()`` (outside autocast) and minimizes ``loss(batch)``.
        Every ``log_every`` steps and at the last, a window record is logged; every
        ``val_every`` steps and at the last, ``validate()``'s entries are added to it
        (``validate`` may call :meth:`end_early`). ``on_checkpoint()`` runs every ``ckpt_every``
        steps before the last, and once at the end. ``metrics.jsonl`` is appended to when
        resuming (``step > 0``), rewritten otherwise.
        """
        metrics = None
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / "metrics.jsonl"
            if self.step:
                keep_metrics_until(path, self.step)
            metrics = path.open("a" if self.step else "w")
        self._window, self._window_start = [], time.perf_counter()
        try:
            while self.step < self.steps:
                self.train_step(partial(loss, next_batch()))
                record = None
                if self.step % self.log_every == 0 or self.step >= self.steps:
                    record = self.window_record()
                if validate is not None and (self.step % val_every == 0 or self.step >= self.steps):
                    record = {**(record or {"step": self.step}), **validate()}
                    if self.step >= self.steps and self.loss_key not in record:
                        record = {**self.window_record(), **record}  # ended by validate()
                if record is not None:
                    self.log(record, metrics, on_log)
                if self.step % self.ckpt_every == 0 and self.step < self.steps:
                    on_checkpoint()
            return on_checkpoint()
        finally:
            if metrics is not None:
                metrics.close()
