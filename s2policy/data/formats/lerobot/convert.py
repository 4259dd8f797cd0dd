"""LeRobot datasets <-> ReplayBuffer (zarr): import LeRobot datasets, export our stores.

Written from LeRobot's dataset format (codebase version v3.0; v2.0/v2.1 are read too; see
:mod:`s2policy.data.formats.lerobot.format`) with pyarrow and PyAV, not with the ``lerobot``
package (its pins conflict with our torch and diffusers); ``pip install -e .[lerobot]``
installs both.

Mapping: video feature ``observation.images.<cam>`` <-> camera ``data/<cam>``,
``observation.state`` <-> ``state``, ``action`` <-> ``action``, ``next.reward``/``next.done`` <->
``reward``/``done``, any other array <-> a feature of its own name (``cube_pos``, ``sim_state``: no
``observation.`` prefix, so LeRobot's policies do not take them as inputs; an imported
``observation.<x>`` becomes ``<x>``, and the store remembers every imported feature's LeRobot
name in ``attrs["lerobot_names"]``, so that an export writes ``observation.<x>`` again).
``episode_index``/``index`` <-> ``meta/episode_ends``, ``fps`` <-> ``control_hz``; task strings
<-> ``attrs["tasks"]`` + ``meta/episode_task`` (its first frame's) + ``data/task_index`` (every
frame's: LeRobot's task may change within an episode); an export of one of our stores has one
task, its task name. An export also writes our attributes and
the shapes and dtypes of our arrays to ``meta/s2policy.json`` and our per-episode ``meta/<name>``
arrays as columns of the episodes table, so that importing it again gives back the same store:
every array identical except the images, which go through the video codec (yuv420p H.264, crf 18).

Imports append one episode at a time to the ReplayBuffer (crash-safe) and resume an interrupted
import of the same dataset; exports are written to ``<out>.partial`` and renamed when complete.

    python -m s2policy.data.formats.lerobot.convert action=import src=pusht \\
        dst=datasets/pusht.zarr [image_size=[96,96]]
    s2policy-lerobot action=export src=datasets/cube_pick.zarr dst=exports/cube_pick

(``configs/lerobot.yaml``, typed by :class:`LeRobotConfig`.)
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s2policy.data.formats.robomimic import check_episode_finite, open_import_output
from s2policy.data.store import ReplayBuffer
from s2policy.fileio import check_replaceable, disk_full, swap_in

logger = logging.getLogger(__name__)
#: Root attribute of an imported store: ``{"complete": bool, "episodes": n}`` (``complete`` is
#: set last, so an interrupted import is marked as such until a rerun completes it).
IMPORT_STATE = "lerobot_import"
#: Root attribute of an imported store: which dataset it came from (a resume must match it).
SOURCE = "lerobot_source"
VCODECS = ("h264", "libsvtav1")
DATA_FILE_MB, VIDEO_FILE_MB = 100, 200  # LeRobot's file sizes


def _formats():
    """The format module (pyarrow and PyAV are an optional extra)."""
    try:
        from s2policy.data.formats.lerobot import format as lerobot_format
        from s2policy.data.formats.lerobot import video  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"LeRobot import/export needs pyarrow and PyAV ({err}): pip install -e .[lerobot]"
        ) from err
    return lerobot_format


# ---------------------------------------------------------------------- export
def export_lerobot(
    store: str | Path,
    out: str | Path,
    task: str | None = None,
    fps: int | None = None,
    vcodec: str = "h264",
    crf: int = 18,
    g: int = 2,
    overwrite: bool = False,
    data_file_mb: float = DATA_FILE_MB,
    video_file_mb: float = VIDEO_FILE_MB,
) -> Path:
    """Write ReplayBuffer ``store`` as a LeRobot dataset (codebase v3.0) in the folder ``out``.

    Args:
        task: the task string of every episode (default: the store's tasks, or its task name).
        fps: frames per second (default: the store's ``control_hz``, a whole number).
        vcodec, crf, g: video codec (``h264``, ``libsvtav1``), quality, keyframe interval.
        overwrite: replace an existing ``out``.
        data_file_mb, video_file_mb: the size at which a new data / video file is started.
    """
    fmt = _formats()
    from s2policy.data.formats.lerobot.writer import DatasetWriter

    buffer, out = ReplayBuffer.open(store), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{out} already exists; pass overwrite=True (command line: overwrite=true) to "
            "replace it"
        )
    check_replaceable(
        out, (out / fmt.SIDECAR).is_file(), "a LeRobot dataset exported by s2policy", [store]
    )
    if vcodec not in VCODECS:
        raise ValueError(f"unknown vcodec {vcodec!r}; known: {', '.join(VCODECS)}")
    if buffer.n_episodes == 0:
        raise ValueError(f"{store} holds no episodes")
    if "action" not in buffer:
        raise ValueError(f"{store} has no 'action' array; keys: {buffer.keys()}")
    attrs = buffer.attrs
    fps = _export_fps(attrs, fps, store)
    names = _export_names(buffer, fmt)
    cameras = [k for k, name in names.items() if name.startswith(fmt.CAMERA_PREFIX)]
    lowdim = sorted(
        (k for k in names if k not in cameras), key=lambda k: (k not in fmt.FEATURES, k)
    )
    tasks, episode_task = _export_tasks(buffer, task)
    per_frame = task is None and "task_index" in buffer and "tasks" in attrs  # see the import
    meta = {k: buffer.get_meta(k) for k in buffer.meta_keys()}
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        writer = DatasetWriter(partial, fps, tasks, vcodec, crf, g, data_file_mb, video_file_mb)
        for i in range(buffer.n_episodes):
            sl = buffer.episode_slice(i)
            episode = buffer.get_episode(i, lowdim)
            check_episode_finite(store, i, episode)
            if per_frame:
                task_index = buffer["task_index"][sl]
            else:
                task_index = np.full(sl.stop - sl.start, episode_task[i], np.int64)
            writer.add_episode(
                {names[k]: episode[k] for k in lowdim},
                {names[k]: buffer[k][sl] for k in cameras},
                task_index,
                {k: v[i] for k, v in meta.items()},
            )
        writer.finish(
            {fmt.FEATURES["state"]: attrs.get("state_keys")},
            attrs.get(SOURCE, {}).get("robot_type"),
        )
        sidecar = {
            "attrs": attrs,
            "keys": {
                k: {
                    "feature": names.get(k),
                    "shape": list(buffer[k].shape[1:]),
                    "dtype": buffer[k].dtype.name,
                }
                for k in buffer.keys()
            },
            "meta": {k: v.dtype.name for k, v in meta.items()},
        }
        (partial / fmt.SIDECAR).write_text(json.dumps(sidecar, indent=2))
    except BaseException as err:
        shutil.rmtree(partial, ignore_errors=True)
        if full := disk_full(err, partial, "rerun the export"):
            raise full from err
        raise
    swap_in(partial, out)
    logger.info("exported %d episodes of %s to %s", buffer.n_episodes, store, out)
    return out


def _export_fps(attrs: dict[str, Any], fps: int | None, store: Any) -> int:
    hz = fps if fps is not None else attrs.get("control_hz", attrs.get("env", {}).get("control_hz"))
    if hz is None:
        raise ValueError(f"{store} records no control_hz; pass fps=<frames per second>")
    if hz <= 0 or float(hz) != int(hz):
        raise ValueError(
            f"LeRobot needs a whole number of frames per second but {store} has control_hz={hz}; "
            "pass fps=<int>"
        )
    return int(hz)


def _export_names(buffer: ReplayBuffer, fmt) -> dict[str, str]:
    """Our data key -> its LeRobot feature (a ``task_index`` array is the task column)."""
    names = {}
    imported = buffer.attrs.get(fmt.LEROBOT_NAMES) or {}  # a LeRobot import's own names
    for key in buffer.keys():
        view = buffer[key]
        if view.dtype == np.uint8 and len(view.shape) == 4 and view.shape[-1] == 3:
            names[key] = imported.get(key) or fmt.CAMERA_PREFIX + key
        elif key != "task_index":
            names[key] = imported.get(key) or fmt.FEATURES.get(key, key)
    taken = list(names.values())
    clash = sorted({n for n in taken if n in fmt.DEFAULT_FEATURES or taken.count(n) > 1})
    if clash:
        raise ValueError(
            f"{buffer.path}: arrays would become the LeRobot features {clash}, which LeRobot "
            "reserves or another array becomes; rename them in the store"
        )
    return names


def _export_tasks(buffer: ReplayBuffer, task: str | None) -> tuple[list[str], np.ndarray]:
    """The task strings and each episode's task index."""
    attrs, first = buffer.attrs, np.zeros(buffer.n_episodes, np.int64)
    if task is None and "tasks" in attrs:  # an imported LeRobot dataset's
        if "episode_task" in buffer.meta_keys():
            return list(attrs["tasks"]), buffer.get_meta("episode_task").astype(np.int64)
        return list(attrs["tasks"]), first
    return [str(task or attrs.get("task") or buffer.path.stem)], first


# ---------------------------------------------------------------------- import
def import_lerobot(
    src: str | Path,
    out: str | Path,
    image_size: Sequence[int] | None = None,
    overwrite: bool = False,
) -> ReplayBuffer:
    """Import the LeRobot dataset folder ``src`` into a new ReplayBuffer at ``out`` (or resume
    an interrupted import of the same dataset).

    Args:
        image_size: ``(H, W)`` to resize camera frames to (default: as stored).
        overwrite: replace an existing ``out`` instead of resuming it.
    """
    _formats()
    from s2policy.data.formats.lerobot.reader import EpisodeReader, SourceDataset

    src, out = Path(src), Path(out)
    dataset = SourceDataset(src)
    size = (int(image_size[0]), int(image_size[1])) if image_size else None
    n = len(dataset.episodes)
    attrs = dataset.store_attrs(size)
    attrs[SOURCE] = dataset.identity(size)
    attrs[IMPORT_STATE] = {"complete": False, "episodes": n}
    with open_import_output(
        out, attrs, overwrite, SOURCE, "dataset", "episodes", sources=[src]
    ) as buffer:
        reader = EpisodeReader(dataset, size)
        try:
            for i in range(buffer.n_episodes, n):
                arrays, meta = reader.read(i)
                buffer.add_episode(arrays, meta)
        finally:
            reader.close()
        buffer.update_attrs({IMPORT_STATE: {"complete": True, "episodes": n}})
    logger.info("imported %d episodes of %s into %s", buffer.n_episodes, src, out)
    return ReplayBuffer.open(out)


# ---------------------------------------------------------------------- command
ACTIONS = ("import", "export")


@dataclass
class LeRobotConfig:
    """``configs/lerobot.yaml``: ``action=import`` (LeRobot dataset -> zarr store) or
    ``action=export`` (zarr store -> LeRobot dataset), from ``src`` to ``dst``."""

    action: str = "???"
    #: import: the LeRobot dataset folder (holding meta/info.json); export: the store.
    src: str = "???"
    #: import: the store to create (datasets/<name>.zarr); export: the dataset folder to write.
    dst: str = "???"
    #: import: resize camera frames to [H, W] (null: as stored).
    image_size: list[int] | None = None
    #: export: the task string of every episode (null: the store's tasks, or its task name);
    #: not ``task``, which names the task config group.
    task_string: str | None = None
    #: export: frames per second (null: the store's control_hz).
    fps: int | None = None
    #: export: video codec, h264 (libx264) or libsvtav1 (LeRobot's default).
    vcodec: str = "h264"
    #: export: constant rate factor (lower: better images, larger files).
    crf: int = 18
    #: export: keyframe interval in frames (LeRobot uses 2: cheap random access).
    g: int = 2
    #: Replace an existing ``dst`` (an import otherwise resumes an interrupted one).
    overwrite: bool = False

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {self.action!r}")
        other = {"import": ("task_string", "fps"), "export": ("image_size",)}[self.action]
        given = [k for k in other if getattr(self, k) is not None]
        if given:
            raise ValueError(f"{given} do not apply to action={self.action}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(f"image_size must be [H, W] of positive ints, got {self.image_size}")
        if self.vcodec not in VCODECS:
            raise ValueError(f"unknown vcodec {self.vcodec!r}; known: {', '.join(VCODECS)}")
        if not 0 <= self.crf <= 63 or self.g < 1:
            raise ValueError(f"need 0 <= crf <= 63 and g >= 1, got crf={self.crf}, g={self.g}")


def run(cfg: LeRobotConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _formats()
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if cfg.action == "import":
        buffer = import_lerobot(cfg.src, cfg.dst, cfg.image_size, cfg.overwrite)
        print(
            f"{buffer.path}: {buffer.n_episodes} episodes, {buffer.n_steps} steps, {buffer.keys()}"
        )
    else:
        out = export_lerobot(
            cfg.src, cfg.dst, cfg.task_string, cfg.fps, cfg.vcodec, cfg.crf, cfg.g, cfg.overwrite
        )
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        info = json.loads((out / "meta/info.json").read_text())
        print(f"{out}: {info['total_episodes']} episodes, {size / 1e6:.1f} MB")


def main(argv: Sequence[str] | None = None) -> None:
    """``s2policy-lerobot action=import|export src=... dst=...`` (``argv``: in-process)."""
    from s2policy.hydra_app import run_hydra, schemas

    run_hydra("lerobot", "lerobot", run, argv, schemas(lerobot_schema=LeRobotConfig))


if __name__ == "__main__":
    main()
