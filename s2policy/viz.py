"""Rerun recordings of demonstrations and evaluated rollouts.

    python -m s2policy.viz dataset=datasets/cube_pick.zarr episode=3  # -> cube_pick_episode3.rrd
    python -m s2policy.viz rollout=outputs/cube_pick/<run>/eval        # -> <eval>/rollouts.rrd
    rerun datasets/cube_pick_episode3.rrd
    python -m s2policy.viz dataset=... mode=web   # serve the web viewer (mode=spawn: native one)

(``configs/viz.yaml``, typed by :class:`VizConfig`; the optional dependency ``rerun-sdk``:
``pip install -e .[viz]``.) A dataset is any ReplayBuffer store (demonstrations, robot logs, an
evaluation's ``records.zarr``); a rollout is an evaluation folder whose ``results.json`` lists
recorded episodes (``n_records``, :mod:`s2policy.evaluation.records`). Each episode is logged
under ``episode_<i>/`` on the timelines ``step`` and ``time`` (``step / control_hz``):

- ``camera/<cam>``: the images; ``state/<name>`` (``ee_x`` ... ``gripper_gap``) and
  ``action/<name>`` (``dx, dy, dz, [dyaw,] gripper``): one scalar series each;
- ``data/<key>``: every other per-step array of at most 16 values (privileged object state, the
  per-step ``success`` of a rollout, a robot log's columns; ``sim_state`` is left out);
- ``world/ee``, ``world/<object>`` (from ``<object>_pos``): positions in 3-D; ``world/ee_path``
  the episode's end-effector path;
- ``policy/predicted``: each predicted chunk ``(K, A)`` at the step it was predicted, and
  ``world/predicted``: the end-effector path its translation deltas lead to from that step
  (``max_step_m`` per unit action, workspace clipping not applied; the executed actions green);
- ``episode``: a text document (seed, success, steps, per-episode meta); ``outcome``: a text log
  line at the last step.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s2policy.data.store import ReplayBuffer
from s2policy.evaluation.records import RECORDS

MODES = ("save", "web", "spawn")
#: Per-step arrays of more values than this are not plotted (``sim_state``: MuJoCo's state).
MAX_SERIES = 16
SKIP = ("sim_state", "predicted_step")
ACTION_NAMES = {5: ["dx", "dy", "dz", "dyaw", "gripper"], 4: ["dx", "dy", "dz", "gripper"]}
META_NAMES = {"episode_seeds": "seed", "episode_success": "success", "episode_index": "index"}
EXECUTED, AHEAD = (40, 200, 70), (150, 150, 150)
EE_KEYS = ["ee_x", "ee_y", "ee_z"]


@dataclass
class VizConfig:
    """``configs/viz.yaml``: what to show, and where the recording goes."""

    #: A ReplayBuffer store (``datasets/<task>.zarr``, a robot log, an evaluation's records).
    dataset: str | None = None
    #: The dataset's episode (default 0); with ``rollout``: one episode of the seed list.
    episode: int | None = None
    #: An evaluation folder (``<run>/eval``) holding ``results.json`` and ``records.zarr``.
    rollout: str | None = None
    #: Rollouts: the first this many recorded episodes (null: all).
    max_episodes: int | None = None
    #: The ``.rrd`` file of ``mode=save``; null: ``<store>_episode<i>.rrd`` beside the store,
    #: ``<eval folder>/rollouts.rrd``.
    out: str | None = None
    #: ``save``: write ``out``; ``web``: serve the web viewer (until Ctrl-C); ``spawn``: open the
    #: native viewer (needs a display).
    mode: str = "save"
    #: ``mode=web``: the port of the viewer page; ``web`` and ``spawn``: the port of the gRPC
    #: server the viewer reads the recording from.
    web_port: int = 9090
    grpc_port: int = 9876

    def __post_init__(self):
        if (self.dataset is None) == (self.rollout is None):
            given = "both were given" if self.dataset else "neither was given"
            raise ValueError(
                f"viz: give dataset=<store> [episode=<i>] or rollout=<eval folder> ({given})"
            )
        if self.mode not in MODES:
            raise ValueError(f"viz: unknown mode {self.mode!r}; known: {', '.join(MODES)}")
        if self.max_episodes is not None and (self.max_episodes < 1 or self.dataset):
            raise ValueError(
                f"viz: max_episodes={self.max_episodes} must be >= 1 and is for rollouts; a "
                "dataset's episode is chosen with episode=<i>"
            )
        if self.out is not None and self.mode != "save":
            raise ValueError(f"viz: out= is the file of mode=save; drop it with mode={self.mode}")

    def output(self) -> Path:
        if self.out is not None:
            return Path(self.out)
        if self.dataset is not None:
            store = Path(self.dataset)
            return store.with_name(f"{store.stem}_episode{self.episode or 0}.rrd")
        return Path(self.rollout) / "rollouts.rrd"


@dataclass
class Episode:
    """One episode to log: its per-step arrays and what is known about it."""

    #: Entity path prefix (``episode_003``).
    name: str
    #: Per-step arrays ``(T, ...)`` by key (``front``, ``state``, ``action``, ...).
    data: dict[str, np.ndarray]
    #: Shown in the episode's text document: seed, success, steps, per-episode meta.
    info: dict[str, Any]
    #: The store's attributes (cameras, ``control_hz``, ``env``, ``state_keys``, ...).
    attrs: dict[str, Any]

    @property
    def n_steps(self) -> int:
        return len(next(iter(self.data.values())))


def dataset_episode(
    buffer: ReplayBuffer, i: int, info: dict[str, Any] | None = None, name: str | None = None
) -> Episode:
    """Episode ``i`` of ``buffer`` (``info`` adds to / overrides its per-episode meta)."""
    if not 0 <= i < buffer.n_episodes:
        raise ValueError(
            f"episode {i} out of range: {buffer.path} holds {buffer.n_episodes} episodes "
            f"(0 to {buffer.n_episodes - 1})"
        )
    data = buffer.get_episode(i, [k for k in buffer.keys() if k != "sim_state"])
    meta = {META_NAMES.get(k, k): buffer.get_meta(k)[i].item() for k in buffer.meta_keys()}
    steps = len(next(iter(data.values())))
    info = {"episode": i, **meta, "steps": steps, "store": str(buffer.path), **(info or {})}
    return Episode(name or f"episode_{i:03d}", data, info, buffer.attrs)


def rollout_episodes(
    folder: str | Path, episode: int | None = None, max_episodes: int | None = None
) -> list[Episode]:
    """The recorded episodes of an evaluation folder (``episode``: only that one of the seed
    list; else the first ``max_episodes``)."""
    folder = Path(folder)
    if not (folder / "results.json").is_file():
        raise FileNotFoundError(
            f"{folder / 'results.json'} does not exist; pass rollout=<a run's eval folder> "
            "(eval_rollouts.py writes it)"
        )
    results = json.loads((folder / "results.json").read_text())
    recorded = [(k, e) for k, e in enumerate(results["episodes"]) if "record" in e]
    if not recorded or not (folder / RECORDS).is_dir():
        raise ValueError(
            f"{folder} holds no recorded episodes; evaluate with n_records=<N> "
            "(python eval_rollouts.py checkpoint=... n_records=2) to keep their closed loops"
        )
    if episode is not None:
        chosen = [(k, e) for k, e in recorded if k == episode]
        if not chosen:
            raise ValueError(
                f"episode {episode} of {folder} was not recorded; recorded: "
                f"{[k for k, _ in recorded]}"
            )
    else:
        chosen = recorded[:max_episodes]
    buffer = ReplayBuffer.open(folder / RECORDS)
    about = {k: results.get(k) for k in ("task", "policy", "checkpoint")}
    return [
        dataset_episode(
            buffer,
            e["record"],
            {"episode": k, **{f: e.get(f) for f in ("seed", "success", "steps", "video")}, **about},
            name=f"episode_{k:03d}",
        )
        for k, e in chosen
    ]


def _rerun():
    try:
        import rerun
    except ImportError:  # bad setup, reported as one sentence by run_hydra
        raise ValueError(
            "the viewer needs the optional dependency rerun-sdk: pip install -e .[viz]"
        ) from None
    return rerun


def _series(ep: Episode) -> list[tuple[str, np.ndarray, list[str]]]:
    """``(entity, (T, D) values, series names)`` of every plotted array."""
    out = []
    state_keys = list(ep.attrs.get("state_keys") or [])
    for key, values in ep.data.items():
        if key in SKIP or key == "predicted" or _is_image(values):
            continue
        flat = values.reshape(len(values), -1)
        if flat.shape[1] > MAX_SERIES or flat.dtype.kind not in "biuf":
            continue
        dims = flat.shape[1]
        if key == "state" and len(state_keys) == dims:
            names = state_keys
        elif key == "action":
            names = ACTION_NAMES.get(dims, [f"a{d}" for d in range(dims)])
        else:
            names = [key] if values.ndim == 1 else [f"{key}[{d}]" for d in range(dims)]
        out.append((key, flat.astype(np.float64), names))
    return out


def _is_image(values: np.ndarray) -> bool:
    return values.dtype == np.uint8 and values.ndim == 4 and values.shape[-1] in (1, 3, 4)


def _ee_positions(ep: Episode) -> np.ndarray | None:
    """``(T, 3)`` end-effector positions, when ``state`` starts with ``ee_x, ee_y, ee_z``."""
    if "state" in ep.data and list(ep.attrs.get("state_keys") or [])[:3] == EE_KEYS:
        return np.asarray(ep.data["state"][:, :3], np.float64)
    return None


def _at(rec, t: int, hz: float | None) -> None:
    rec.set_time("step", sequence=t)
    if hz:
        rec.set_time("time", duration=t / hz)


def log_episode(rec, ep: Episode) -> None:
    """Log ``ep`` under ``ep.name`` into the recording stream ``rec`` (see the module
    docstring)."""
    rr = _rerun()
    p, n = ep.name, ep.n_steps
    hz = float(ep.attrs["control_hz"]) if ep.attrs.get("control_hz") else None
    steps = np.arange(n)
    indexes = [rr.TimeColumn("step", sequence=steps)]
    if hz:
        indexes.append(rr.TimeColumn("time", duration=steps / hz))
    text = "\n".join(f"- **{k}**: {v}" for k, v in ep.info.items() if v is not None)
    rec.log(f"{p}/episode", rr.TextDocument(text, media_type="text/markdown"), static=True)
    for key, values, names in _series(ep):
        if key in ("state", "action"):  # one plot per dimension: their units differ
            for d, name in enumerate(names):
                column = rr.Scalars.columns(scalars=values[:, d])
                rec.send_columns(f"{p}/{key}/{name}", indexes, column)
        else:
            rec.log(f"{p}/data/{key}", rr.SeriesLines(names=names), static=True)
            rec.send_columns(f"{p}/data/{key}", indexes, rr.Scalars.columns(scalars=values))
    ee = _ee_positions(ep)
    if ee is not None:
        rec.log(f"{p}/world/ee_path", rr.LineStrips3D([ee], colors=[AHEAD]), static=True)
    objects = [k for k, v in ep.data.items() if k.endswith("_pos") and v.shape[1:] == (3,)]
    cameras = [k for k, v in ep.data.items() if _is_image(v)]
    for t in range(n):
        _at(rec, t, hz)
        for cam in cameras:
            rec.log(f"{p}/camera/{cam}", rr.Image(ep.data[cam][t]))
        if ee is not None:
            rec.log(f"{p}/world/ee", rr.Points3D([ee[t]], radii=0.006, labels=["ee"]))
        for key in objects:
            name = key.removesuffix("_pos")
            rec.log(f"{p}/world/{name}", rr.Points3D([ep.data[key][t]], radii=0.01, labels=[name]))
    _log_predictions(rec, ep, ee, hz)
    success = ep.info.get("success")
    verdict = None if success in (None, -1) else ("SUCCESS" if success else "FAILURE")
    _at(rec, n - 1, hz)
    level = "INFO" if verdict == "SUCCESS" else "WARN"
    text = f"{p}: {verdict or 'success unknown'} after {n} steps"
    rec.log(f"{p}/outcome", rr.TextLog(text, level=level))


def _log_predictions(rec, ep: Episode, ee: np.ndarray | None, hz: float | None) -> None:
    """Each predicted chunk ``(K, A)`` at the step it was predicted, and the end-effector path
    its translation deltas lead to (the executed part green)."""
    if "predicted" not in ep.data:
        return
    rr = _rerun()
    p = ep.name
    max_step = (ep.attrs.get("env") or {}).get("max_step_m")
    executed = int(ep.attrs.get("n_action_steps") or 1)
    predicted, at = ep.data["predicted"], ep.data["predicted_step"]
    for t in np.flatnonzero(at == np.arange(len(at))):
        _at(rec, int(t), hz)
        chunk = predicted[t]
        rec.log(f"{p}/policy/predicted", rr.Tensor(chunk, dim_names=["ahead", "action"]))
        if ee is not None and max_step:
            path = np.vstack([ee[t], ee[t] + np.cumsum(chunk[:, :3] * max_step, axis=0)])
            strips = [path[: executed + 1], path[executed:]]
            rec.log(f"{p}/world/predicted", rr.LineStrips3D(strips, colors=[EXECUTED, AHEAD]))


def blueprint(episodes: Sequence[Episode]):
    """One tab per episode: cameras and the episode text, state/action/data plots, the 3-D
    world and the predicted chunk."""
    import rerun.blueprint as rrb

    tabs = []
    for ep in episodes:
        p = ep.name
        cams = [
            rrb.Spatial2DView(origin=f"{p}/camera/{k}", name=k)
            for k, v in ep.data.items()
            if _is_image(v)
        ]
        tabs.append(
            rrb.Horizontal(
                rrb.Vertical(*cams, rrb.TextDocumentView(origin=f"{p}/episode", name="episode")),
                rrb.Vertical(
                    rrb.TimeSeriesView(origin=f"{p}/state", name="state"),
                    rrb.TimeSeriesView(origin=f"{p}/action", name="action"),
                    rrb.TimeSeriesView(origin=f"{p}/data", name="data"),
                ),
                rrb.Vertical(
                    rrb.Spatial3DView(origin=f"{p}/world", name="world"),
                    rrb.TensorView(origin=f"{p}/policy/predicted", name="predicted chunk"),
                    rrb.TextLogView(origin=f"{p}/outcome", name="outcome"),
                ),
                name=p,
            )
        )
    return rrb.Blueprint(rrb.Tabs(*tabs))


def _stream(rr):
    """A recording of its own (not rerun's global one), on our timelines only (no wall-clock
    ``log_time``)."""
    rec = rr.RecordingStream("s2policy")
    rec.set_log_time_enabled(False)
    return rec


def write_recording(episodes: Sequence[Episode], path: str | Path) -> Path:
    """Save ``episodes`` as the Rerun recording ``path`` (``.rrd``, for ``rerun <path>``)."""
    rr = _rerun()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = _stream(rr)
    rec.save(path, default_blueprint=blueprint(episodes))
    for ep in episodes:
        log_episode(rec, ep)
    rec.flush()
    rec.disconnect()
    return path


def load_episodes(cfg: VizConfig) -> list[Episode]:
    if cfg.dataset is not None:
        return [dataset_episode(ReplayBuffer.open(cfg.dataset), cfg.episode or 0)]
    return rollout_episodes(cfg.rollout, cfg.episode, cfg.max_episodes)


def run_viz(cfg: VizConfig) -> None:
    """The command: write, serve or show the recording of ``cfg``'s episodes."""
    rr = _rerun()
    episodes = load_episodes(cfg)
    if cfg.mode == "save":
        print(f"wrote {write_recording(episodes, cfg.output())} (open it with: rerun <file>)")
        return
    try:
        _show(rr, cfg, episodes)
    except KeyboardInterrupt:  # Ctrl-C ends serving, whenever it comes
        pass


def _show(rr, cfg: VizConfig, episodes: Sequence[Episode]) -> None:
    """Stream ``episodes`` to a spawned native viewer, or serve them to the web viewer until
    Ctrl-C."""
    rec = _stream(rr)
    if cfg.mode == "spawn":  # this environment's viewer (its version), even when not on PATH
        beside = Path(sys.executable).with_name("rerun")
        exe = str(beside) if beside.is_file() else None
        rr.spawn(
            port=cfg.grpc_port,
            recording=rec,
            default_blueprint=blueprint(episodes),
            executable_path=exe,
        )
    else:
        url = rec.serve_grpc(grpc_port=cfg.grpc_port, default_blueprint=blueprint(episodes))
        rr.serve_web_viewer(web_port=cfg.web_port, open_browser=False, connect_to=url)
    for ep in episodes:
        log_episode(rec, ep)
    try:
        rec.flush()
    except RuntimeError as err:  # the spawned viewer never listened: no display, say
        raise ValueError(
            f"the native viewer did not start ({err}); on a machine without a display use "
            "mode=save and open the file elsewhere, or mode=web"
        ) from None
    if cfg.mode == "web":
        page = f"http://localhost:{cfg.web_port}/?url={urllib.parse.quote(url, safe='')}"
        print(f"serving the viewer at {page} (Ctrl-C stops it)", flush=True)
        while True:
            time.sleep(1)


def main(argv: Sequence[str] | None = None) -> None:
    """``s2policy-viz dataset=<store> episode=<i>`` / ``rollout=<eval folder>``."""
    from s2policy.hydra_app import run_hydra, schemas

    run_hydra("viz", "viz", run_viz, argv, schemas(viz_schema=VizConfig))


if __name__ == "__main__":
    main()
