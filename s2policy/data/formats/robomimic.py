"""robomimic hdf5 <-> ReplayBuffer (zarr): import robomimic datasets, export our stores.

robomimic's layout (https://robomimic.github.io/docs/datasets/overview.html)::

    data/                      attrs: total (steps), env_args (JSON: env_name, type, env_kwargs)
      demo_<i>/                attrs: num_samples
        actions   (N, A)       rewards (N,)   dones (N,)   states (N, S)  (simulator states)
        obs/<key> (N, ...)     next_obs/<key> (N, ...)  (images: uint8 (N, H, W, 3), "<cam>_image")
    mask/<filter>              demo names (bytes) of a subset, e.g. "train", "valid"

Mapping: ``obs/<cam>_image`` <-> camera ``data/<cam>``, other ``obs/<key>`` <-> ``data/<key>``
(``state`` stays ``state``; a foreign file's proprioception can be concatenated into ``state``
with ``state_keys``), ``actions`` <-> ``action``, ``states`` <-> ``sim_state``, ``rewards`` and
``dones`` <-> ``reward`` and ``done``. An export synthesizes sparse ``rewards``/``dones`` (1 at the
last step of a successful episode) when the store has none, and records the store's keys,
attributes and per-episode ``meta`` in ``data.attrs["s2policy"]`` so that importing it again gives
back the identical store.

Imports append one demo at a time to the ReplayBuffer (crash-safe) and resume an interrupted import
of the same file; exports are written to ``<out>.partial`` and renamed when complete.

    python -m s2policy.data.formats.robomimic action=import src=robomimic/lift/ph/image.hdf5 \\
        dst=datasets/lift.zarr filter=train \\
        state_keys=[robot0_eef_pos,robot0_eef_quat,robot0_gripper_qpos]
    s2policy-robomimic action=export src=datasets/cube_pick.zarr dst=exports/cube_pick.hdf5

(``configs/robomimic.yaml``, typed by :class:`RobomimicConfig`.)
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from s2policy.data.store import ReplayBuffer
from s2policy.fileio import check_replaceable, disk_full

logger = logging.getLogger(__name__)
#: Root attribute of an imported store: ``{"complete": bool, "demos": n}`` (``complete`` is set
#: last, so an interrupted or failed import is marked as such until a rerun completes it).
IMPORT_STATE = "robomimic_import"

IMAGE_SUFFIX = "_image"
GYM_ENV_TYPE = 2  # robomimic.envs.env_base.EnvType.GYM_TYPE
#: robomimic dataset key -> our data key (and back).
DATASET_KEYS = {"actions": "action", "states": "sim_state", "rewards": "reward", "dones": "done"}
_OURS = {v: k for k, v in DATASET_KEYS.items()}


class RobomimicFormatError(ValueError):
    """The hdf5 file does not follow robomimic's layout, or asks for what it does not hold."""


def _is_image(array: Any) -> bool:
    return array.dtype == np.uint8 and array.ndim == 4 and array.shape[-1] == 3


def _demo_names(data: h5py.Group, path: Path) -> list[str]:
    names = [n for n in data if isinstance(data[n], h5py.Group)]
    bad = [n for n in names if not re.fullmatch(r"demo_\d+", n)]
    if bad:
        raise RobomimicFormatError(f"{path}: data/ holds groups not named demo_<i>: {bad[:5]}")
    if not names:
        raise RobomimicFormatError(f"{path}: data/ holds no demo_<i> groups")
    return sorted(names, key=lambda n: int(n.split("_")[1]))


def _decode(names: np.ndarray) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def read_demo(
    demo: h5py.Group,
    name: str,
    obs_keys: Sequence[str] | None,
    state_keys: Sequence[str] | None,
    keep: Sequence[str] | None,
) -> dict[str, np.ndarray]:
    """One demo as our per-step arrays, after checking that every array has the same length."""
    if "actions" not in demo or "obs" not in demo:
        raise RobomimicFormatError(f"{name} has no actions or no obs/ group")
    n = demo["actions"].shape[0]
    declared = demo.attrs.get("num_samples")
    if declared is not None and int(declared) != n:
        raise RobomimicFormatError(
            f"{name}: attrs num_samples={int(declared)} but actions has {n} steps"
        )
    obs = demo["obs"]
    available = sorted(obs)
    wanted = available if obs_keys is None else list(obs_keys)
    unknown = [k for k in [*wanted, *(state_keys or [])] if k not in obs]
    if unknown:
        raise RobomimicFormatError(
            f"{name}: unknown obs key(s) {unknown}; this file has {available}"
        )
    arrays: dict[str, np.ndarray] = {}
    for key in wanted:
        value = obs[key][()]
        ours = key[: -len(IMAGE_SUFFIX)] if key.endswith(IMAGE_SUFFIX) and _is_image(value) else key
        arrays[ours] = value
    if state_keys:
        parts = [np.asarray(obs[k][()], np.float32).reshape(n, -1) for k in state_keys]
        arrays["state"] = np.concatenate(parts, axis=1)
    for theirs, ours in DATASET_KEYS.items():
        if theirs in demo and (keep is None or ours in keep):
            arrays[ours] = demo[theirs][()]
    for key, value in arrays.items():
        if len(value) != n:
            raise RobomimicFormatError(
                f"{name}: inconsistent demo lengths: {key!r} has {len(value)} steps but actions "
                f"has {n}"
            )
    if keep is not None:
        arrays = {k: v for k, v in arrays.items() if k in keep}
    return arrays


def import_robomimic(
    src: str | Path,
    out: str | Path,
    obs_keys: Sequence[str] | None = None,
    state_keys: Sequence[str] | None = None,
    filter_key: str | None = None,
    overwrite: bool = False,
) -> ReplayBuffer:
    """Import robomimic file ``src`` into a new ReplayBuffer at ``out`` (or resume an interrupted
    import of the same file).

    Args:
        obs_keys: obs keys to import (all by default); unknown keys are an error.
        state_keys: low-dim obs keys concatenated (in this order) into our ``state``.
        filter_key: import only the demos listed in ``mask/<filter_key>``.
        overwrite: replace an existing ``out`` instead of resuming it.
    """
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise FileNotFoundError(f"no robomimic file at {src}")
    with _open_hdf5(src) as f:
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            raise RobomimicFormatError(
                f"{src} is not a robomimic dataset: it has no data/ group (top level: {list(f)})"
            )
        data = f["data"]
        names = _demo_names(data, src)
        if filter_key is not None:
            masks = sorted(f["mask"]) if "mask" in f else []
            if filter_key not in masks:
                raise RobomimicFormatError(
                    f"{src} has no filter key mask/{filter_key}; filter keys: {masks or 'none'}"
                )
            listed = _decode(f["mask"][filter_key][()])
            absent = sorted(set(listed) - set(names))
            if absent:
                raise RobomimicFormatError(
                    f"{src}: mask/{filter_key} lists demos that data/ lacks: {absent[:5]}"
                )
            names = [n for n in names if n in set(listed)]
        ours = json.loads(data.attrs.get("s2policy", "null") or "null")
        env_args = data.attrs.get("env_args")
        attrs = dict(ours["attrs"]) if ours else {}
        attrs["robomimic_source"] = {
            "path": str(src.resolve()),
            "size": src.stat().st_size,
            "filter": filter_key,
            "env_args": json.loads(env_args) if env_args else None,
        }
        keep = ours["keys"] if ours and obs_keys is None and state_keys is None else None
        first = None  # a foreign file's first demo, read once: for the attributes and the store
        if not ours:  # what training reads from a store's attributes
            first = read_demo(data[names[0]], f"{src}:data/{names[0]}", obs_keys, state_keys, None)
            attrs["cameras"] = [k for k, v in first.items() if _is_image(v)]
            attrs["action_dim"] = int(np.prod(first["action"].shape[1:]))
            if "state" not in first:
                logger.warning(
                    "%s has no obs/state: policies need one; pass state_keys (command line: "
                    "state_keys=[...]) naming the low-dim obs to concatenate into it",
                    src,
                )
        attrs[IMPORT_STATE] = {"complete": False, "demos": len(names)}
        with open_import_output(out, attrs, overwrite, sources=[src]) as buffer:
            for name in names[buffer.n_episodes :]:
                demo = data[name]
                if first is not None and name == names[0]:
                    arrays = first
                else:
                    arrays = read_demo(demo, f"{src}:data/{name}", obs_keys, state_keys, keep)
                meta = {k[5:]: demo.attrs[k] for k in demo.attrs if k.startswith("meta_")}
                buffer.add_episode(arrays, meta=meta)
            buffer.update_attrs({IMPORT_STATE: {"complete": True, "demos": len(names)}})
    logger.info("imported %d demos of %s into %s", buffer.n_episodes, src, out)
    return ReplayBuffer.open(out)


def _open_hdf5(src: Path) -> h5py.File:
    try:
        return h5py.File(src, "r")
    except OSError as err:
        raise RobomimicFormatError(
            f"{src} is not a readable HDF5 file ({err}); a robomimic dataset is an .hdf5 file "
            "with a data/ group of demo_<i> groups"
        ) from err


#: Import attributes -> (source attribute, format, unit) of every importer (robomimic, LeRobot).
IMPORTS = {
    IMPORT_STATE: ("robomimic_source", "robomimic", "demos"),
    "lerobot_import": ("lerobot_source", "LeRobot", "episodes"),
}


def check_import_complete(attrs: dict[str, Any], store: str | Path) -> None:
    """Refuse a store whose robomimic or LeRobot import was interrupted (it holds only some
    demos)."""
    for key, (source_key, name, unit) in IMPORTS.items():
        state = attrs.get(key)
        if state is not None and not state.get("complete"):
            source = attrs.get(source_key, {}).get("path", "its source")
            raise ValueError(
                f"{store} is an interrupted {name} import of {source} ({state.get(unit)} {unit} "
                "expected); rerun the same import command to complete it"
            )


def open_import_output(
    out: Path,
    attrs: dict[str, Any],
    overwrite: bool,
    source_key: str = "robomimic_source",
    source: str = "file",
    unit: str = "demos",
    sources: Sequence[str | Path] = (),
) -> ReplayBuffer:
    """Create an import's store, or reopen it to resume an interrupted import of the same
    source (``attrs[source_key]``); any other existing store is refused unless ``overwrite``
    (which never replaces anything but a store, nor one holding ``sources``)."""
    if out.exists() and not overwrite:
        buffer = ReplayBuffer.open(out, "a")
        if buffer.attrs.get(source_key) != attrs[source_key]:
            buffer.close()
            raise FileExistsError(
                f"{out} exists and is not an interrupted import of the same {source}; pass "
                "overwrite=True (command line: overwrite=true) to replace it"
            )
        logger.info("resuming the import into %s after %d %s", out, buffer.n_episodes, unit)
        return buffer
    return ReplayBuffer.create(out, attrs, overwrite=overwrite, sources=sources)


def export_robomimic(
    store: str | Path,
    out: str | Path,
    next_obs: bool = True,
    valid_ratio: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write ReplayBuffer ``store`` as robomimic file ``out``.

    Args:
        next_obs: also write ``next_obs/`` (robomimic's training loads it by default).
        valid_ratio: fraction of demos listed in ``mask/valid`` (the rest in ``mask/train``).
        seed: seed of that split.
        overwrite: replace an existing ``out``.
    """
    buffer, out = ReplayBuffer.open(store), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True to replace it")
    check_replaceable(out, _is_our_export(out), "a robomimic file exported by s2policy", [store])
    if not 0.0 <= valid_ratio < 1.0:
        raise ValueError(f"valid_ratio must be in [0, 1), got {valid_ratio}")
    if buffer.n_episodes == 0:
        raise ValueError(f"{store} holds no episodes")
    if "action" not in buffer:
        raise ValueError(f"{store} has no 'action' array; keys: {buffer.keys()}")
    attrs = buffer.attrs
    success = (
        buffer.get_meta("episode_success")
        if "episode_success" in buffer.meta_keys()
        else np.ones(buffer.n_episodes, bool)
    )
    partial = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write_file(partial, buffer, attrs, success, next_obs, valid_ratio, seed)
    except BaseException as err:
        partial.unlink(missing_ok=True)
        if full := disk_full(err, partial, "rerun the export"):
            raise full from err
        raise
    os.replace(partial, out)
    logger.info("exported %d demos of %s to %s", buffer.n_episodes, store, out)
    return out


def _is_our_export(path: Path) -> bool:
    """Whether ``path`` is a robomimic file that :func:`export_robomimic` wrote."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return "data" in f and "s2policy" in f["data"].attrs
    except OSError:
        return False


def check_episode_finite(store: str | Path, i: int, episode: dict[str, np.ndarray]) -> None:
    """Refuse to export an episode whose float arrays hold NaN or inf (our importers would
    refuse the file), naming the episode, the array and the step."""
    for key, value in episode.items():
        bad = ~np.isfinite(value) if value.dtype.kind in "fc" else None
        if bad is not None and bad.any():
            step = int(np.argwhere(bad)[0][0])
            raise ValueError(
                f"{store}: episode {i} has NaN or inf in {key!r} (first at step {step} of the "
                "episode); fix or drop that episode before exporting (nothing was written)"
            )


def _write_file(
    partial: Path,
    buffer: ReplayBuffer,
    attrs: dict[str, Any],
    success: np.ndarray,
    next_obs: bool,
    valid_ratio: float,
    seed: int,
) -> None:
    with h5py.File(partial, "w") as f:
        data = f.create_group("data")
        for i in range(buffer.n_episodes):
            _write_demo(data.create_group(f"demo_{i}"), buffer, i, bool(success[i]), next_obs)
        data.attrs["total"] = buffer.n_steps
        data.attrs["env_args"] = json.dumps(
            {
                "env_name": attrs.get("env_id", attrs.get("task", "unknown")),
                "type": GYM_ENV_TYPE,
                "env_kwargs": attrs.get("env", {}),
            }
        )
        data.attrs["s2policy"] = json.dumps({"attrs": attrs, "keys": buffer.keys()})
        names = np.array([f"demo_{i}" for i in range(buffer.n_episodes)])
        order = np.random.default_rng(seed).permutation(len(names))
        n_valid = int(round(valid_ratio * len(names)))
        mask = f.create_group("mask")
        for key, picked in (("train", order[n_valid:]), ("valid", order[:n_valid])):
            mask.create_dataset(key, data=np.array(sorted(names[picked]), dtype="S"))


def _write_demo(
    group: h5py.Group, buffer: ReplayBuffer, i: int, success: bool, next_obs: bool
) -> None:
    episode = buffer.get_episode(i)
    check_episode_finite(buffer.path, i, episode)
    n = len(episode["action"])
    group.attrs["num_samples"] = n
    for key in buffer.meta_keys():
        if key != "episode_ends":
            group.attrs[f"meta_{key}"] = buffer.get_meta(key)[i]
    obs, nxt = group.create_group("obs"), group.create_group("next_obs") if next_obs else None
    for key, value in episode.items():
        if key in _OURS:
            group.create_dataset(_OURS[key], data=value)
            continue
        name = f"{key}{IMAGE_SUFFIX}" if _is_image(value) else key
        compression = {"compression": "gzip", "compression_opts": 4} if _is_image(value) else {}
        obs.create_dataset(name, data=value, **compression)
        if nxt is not None:
            nxt.create_dataset(name, data=np.concatenate([value[1:], value[-1:]]), **compression)
    done = np.zeros(n, np.int64)
    done[-1] = 1
    if "reward" not in episode:
        group.create_dataset("rewards", data=done * float(success))
    if "done" not in episode:
        group.create_dataset("dones", data=done)


ACTIONS = ("import", "export")


@dataclass
class RobomimicConfig:
    """``configs/robomimic.yaml``: ``action=import`` (robomimic hdf5 -> zarr store) or
    ``action=export`` (zarr store -> robomimic hdf5), from ``src`` to ``dst``."""

    action: str = "???"
    #: import: the robomimic .hdf5 file; export: the ReplayBuffer store.
    src: str = "???"
    #: import: the store to create (datasets/<name>.zarr); export: the .hdf5 file to write.
    dst: str = "???"
    #: import: obs keys to import (null: all).
    obs_keys: list[str] | None = None
    #: import: low-dim obs keys concatenated (in this order) into ``state``.
    state_keys: list[str] | None = None
    #: import: only the demos of ``mask/<filter>`` (e.g. train).
    filter: str | None = None
    #: export: also write ``next_obs/`` (false: half the size).
    next_obs: bool = True
    #: export: fraction of demos in ``mask/valid``.
    valid_ratio: float = 0.1
    #: export: seed of the train/valid split.
    seed: int = 0
    #: Replace an existing ``dst`` (an import otherwise resumes an interrupted one).
    overwrite: bool = False

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {self.action!r}")
        if self.action == "export":
            given = [k for k in ("obs_keys", "state_keys", "filter") if getattr(self, k)]
            if given:
                raise ValueError(f"{given} apply to action=import only")
        if not 0.0 <= self.valid_ratio < 1.0:
            raise ValueError(f"valid_ratio must be in [0, 1), got {self.valid_ratio}")


def run(cfg: RobomimicConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if cfg.action == "import":
        buffer = import_robomimic(
            cfg.src, cfg.dst, cfg.obs_keys, cfg.state_keys, cfg.filter, cfg.overwrite
        )
        print(
            f"{buffer.path}: {buffer.n_episodes} episodes, {buffer.n_steps} steps, {buffer.keys()}"
        )
    else:
        out = export_robomimic(
            cfg.src, cfg.dst, cfg.next_obs, cfg.valid_ratio, cfg.seed, cfg.overwrite
        )
        print(f"{out}: {os.path.getsize(out) / 1e6:.1f} MB")


def main(argv: Sequence[str] | None = None) -> None:
    """``s2policy-robomimic action=import|export src=... dst=...`` (``argv``: in-process)."""
    from s2policy.hydra_app import run_hydra, schemas

    run_hydra("robomimic", "robomimic", run, argv, schemas(robomimic_schema=RobomimicConfig))


if __name__ == "__main__":
    main()
