"""A LeRobot dataset folder read for import: :class:`SourceDataset` (what to import, which
attributes the store gets) and :class:`EpisodeReader` (one episode at a time, lengths checked).

Reads codebase versions v3.x and v2.0/v2.1 (see :mod:`s2policy.data.formats.lerobot.format`).
What an export of ours wrote (``meta/s2policy.json``: our attributes, the shapes and dtypes of our
arrays, the per-episode meta columns) is restored exactly; a foreign dataset is mapped by feature
name.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from s2policy.data.formats.lerobot.format import (
    CAMERA_PREFIX,
    DEFAULT_FEATURES,
    FEATURES,
    INFO_PATH,
    LEROBOT_NAMES,
    SIDECAR,
    DataFiles,
    LeRobotFormatError,
    from_column,
    read_episodes,
    read_info,
    read_tasks,
)
from s2policy.data.formats.lerobot.video import VideoReader
from s2policy.fileio import read_json

logger = logging.getLogger(__name__)
_OURS = {v: k for k, v in FEATURES.items()}


@dataclass
class Feature:
    """A LeRobot feature imported as one of our arrays."""

    name: str  # LeRobot's
    key: str  # ours
    kind: str  # "column" | "video" | "image" | "task" (the task_index column)
    shape: list[int]  # declared in meta/info.json
    dtype: str
    step_shape: list[int] | None = None  # ours, when our export recorded it


class SourceDataset:
    """A LeRobot dataset folder, checked: its info, the features to import (:attr:`plan`), its
    episodes (length, data file, video files and offsets) and task strings."""

    def __init__(self, root: Path):
        self.root = root
        self.info, major = read_info(root)
        path = root / SIDECAR
        self.sidecar = (
            read_json(path, "s2policy sidecar", "re-export the dataset") if path.is_file() else None
        )
        self.plan = self._sidecar_plan() if self.sidecar else self._foreign_plan()
        videos = [f.name for f in self.plan if f.kind == "video"]
        self.episodes = read_episodes(root, self.info, major, videos)
        self.tasks = read_tasks(root, major)
        self._check_episodes()

    def _sidecar_plan(self) -> list[Feature]:
        features, keys = self.info["features"], self.sidecar["keys"]
        absent = [s["feature"] for s in keys.values() if s["feature"] not in (None, *features)]
        if absent:
            raise LeRobotFormatError(
                f"{self.root}: {SIDECAR} names features {absent} that meta/info.json lacks"
            )
        plan = []
        for key, spec in keys.items():
            name = spec["feature"] or "task_index"  # our per-step task indices: LeRobot's column
            kind = "task" if spec["feature"] is None else features[name]["dtype"]
            kind = kind if kind in ("video", "image", "task") else "column"
            shape = list(features[name]["shape"])
            plan.append(Feature(name, key, kind, shape, spec["dtype"], spec["shape"]))
        return plan

    def _foreign_plan(self) -> list[Feature]:
        features = self.info["features"]
        missing = [f for f in (FEATURES["state"], FEATURES["action"]) if f not in features]
        if missing:
            found = [f for f in features if f not in DEFAULT_FEATURES]
            raise LeRobotFormatError(
                f"{self.root} has no feature {' or '.join(missing)}; its features: {found}"
            )
        plan, skipped = [], []
        for name, feature in features.items():
            dtype = feature["dtype"]
            if name in DEFAULT_FEATURES:
                continue
            if dtype in ("string", "language"):
                skipped.append(name)
                continue
            if dtype in ("video", "image"):
                key = name.removeprefix(CAMERA_PREFIX).removeprefix("observation.")
                plan.append(Feature(name, key, dtype, list(feature["shape"]), "uint8"))
            else:
                key = _OURS.get(name, name.removeprefix("observation."))
                plan.append(Feature(name, key, "column", list(feature["shape"]), dtype))
        keys = [f.key for f in plan]
        clash = sorted({k for k in keys if keys.count(k) > 1})
        if clash:
            raise LeRobotFormatError(f"{self.root}: several features become our arrays {clash}")
        if skipped:
            logger.warning("%s: not importing the text features %s", self.root, skipped)
        return plan

    def _check_episodes(self) -> None:
        episodes, info = self.episodes, self.info
        order = [int(ep["episode_index"]) for ep in episodes]
        if order != list(range(len(episodes))):
            raise LeRobotFormatError(
                f"{self.root}: the episodes table does not list episodes 0..{len(episodes) - 1}"
            )
        for key, value in (("total_episodes", len(episodes)), ("total_frames", self.n_frames)):
            if key in info and int(info[key]) != value:
                raise LeRobotFormatError(
                    f"{self.root}: meta/info.json says {key}={info[key]} but its episodes table "
                    f"holds {value}"
                )
        meta = (self.sidecar or {}).get("meta", {})
        absent = [k for k in meta if episodes and k not in episodes[0]]
        if absent:
            raise LeRobotFormatError(
                f"{self.root}: the episodes table lacks the columns {absent} of {SIDECAR}"
            )

    @property
    def n_frames(self) -> int:
        return sum(int(ep["length"]) for ep in self.episodes)

    def store_attrs(self, size: tuple[int, int] | None) -> dict[str, Any]:
        """The attributes of the store: ours as exported, or what training needs of a foreign
        dataset (cameras, action_dim, control_hz, image_size, state_keys, tasks)."""
        if self.sidecar:
            attrs = dict(self.sidecar["attrs"])
            if size is not None:
                attrs["image_size"] = list(size)
                if isinstance(attrs.get("env"), dict):
                    attrs["env"] = {**attrs["env"], "image_size": list(size)}
            return attrs
        features = self.info["features"]
        visual = [f for f in self.plan if f.kind in ("video", "image")]
        attrs = {
            "cameras": [f.key for f in visual],
            "action_dim": int(np.prod(features["action"]["shape"])),
            "control_hz": float(self.info["fps"]),
            "tasks": self.tasks,
            # each array's LeRobot feature, so that an export gives the same names back
            # (``observation.environment_state`` stays an observation for LeRobot's policies)
            LEROBOT_NAMES: {f.key: f.name for f in self.plan},
        }
        sizes = {size or _height_width(features[f.name]) for f in visual}
        if len(sizes) == 1:
            attrs["image_size"] = list(sizes.pop())
        for feature, key in (
            (FEATURES["state"], "state_keys"),
            (FEATURES["action"], "action_keys"),
        ):
            names = _names(features[feature])
            if names is not None:
                attrs[key] = names
        return attrs

    def identity(self, size: tuple[int, int] | None) -> dict[str, Any]:
        """What a resumed import must match."""
        return {
            "path": str(self.root.resolve()),
            "codebase_version": self.info["codebase_version"],
            "robot_type": self.info.get("robot_type"),
            "fps": self.info["fps"],
            "episodes": len(self.episodes),
            "frames": self.n_frames,
            "info_sha256": hashlib.sha256((self.root / INFO_PATH).read_bytes()).hexdigest(),
            "image_size": list(size) if size else None,
        }


def _names(feature: dict[str, Any]) -> list[str] | None:
    """A vector feature's per-dimension names (``names`` as a list, or ``{"motors": [...]}``)."""
    names = feature.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, list) and len(names) == int(np.prod(feature["shape"])):
        return [str(n) for n in names]
    return None


def _height_width(feature: dict[str, Any]) -> tuple[int, int]:
    shape, names = feature["shape"], feature.get("names") or []
    if names and str(names[0]).startswith("channel"):  # (C, H, W) in some v2 datasets
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


class EpisodeReader:
    """Reads the episodes of a :class:`SourceDataset` in order, keeping the current data file and
    one video file per feature open."""

    def __init__(self, dataset: SourceDataset, size: tuple[int, int] | None = None):
        self.dataset, self.size = dataset, size
        columns = [f.name for f in dataset.plan if f.kind in ("column", "image")]
        self.files = DataFiles(
            [*columns, "timestamp", "frame_index", "episode_index", "task_index"]
        )
        self.videos: dict[str, VideoReader] = {}

    def read(self, index: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Episode ``index``: its arrays and per-episode meta, after checking that the episodes
        table, the data rows and the videos agree on its length."""
        episode = self.dataset.episodes[index]
        table = self.files.episode(episode["data"], index)
        n = table.num_rows
        if n != int(episode["length"]):
            raise LeRobotFormatError(
                f"episode {index} has length {episode['length']} in the episodes table but "
                f"{n} rows in {episode['data']}"
            )
        if not np.array_equal(table["frame_index"].to_numpy(), np.arange(n)):
            raise LeRobotFormatError(
                f"{episode['data']}: the rows of episode {index} are not frames 0..{n - 1}"
            )
        timestamps = from_column(table["timestamp"], [1], "timestamp").astype(np.float64)
        task_index = table["task_index"].to_numpy().astype(np.int64)
        arrays = {}
        for f in self.dataset.plan:
            if f.kind == "column":
                declared = self.dataset.info["features"][f.name]["dtype"]
                values = from_column(table[f.name], f.shape, f.name, declared, episode["data"])
                if f.step_shape is not None:
                    values = values.reshape(n, *f.step_shape)
                arrays[f.key] = values.astype(f.dtype, copy=False)
            elif f.kind == "video":
                path, start = episode["videos"][f.name]
                arrays[f.key] = self._frames(f.name, path, start, timestamps, index)
            elif f.kind == "image":
                arrays[f.key] = _decode_images(table[f.name], self.size)
            else:
                arrays[f.key] = task_index.astype(f.dtype)
        sidecar = self.dataset.sidecar
        if sidecar is not None:
            meta = {k: np.asarray(episode[k], dtype) for k, dtype in sidecar["meta"].items()}
        else:  # the task of every frame: LeRobot's tasks may change within an episode
            meta = {"episode_task": task_index[0]}
            arrays["task_index"] = task_index
        return arrays, meta

    def _frames(self, name: str, path: Path, start: float, timestamps, index: int) -> np.ndarray:
        reader = self.videos.get(name)
        try:
            if reader is None or reader.path != path:
                if reader is not None:
                    reader.close()
                self.videos.pop(name, None)
                reader = self.videos[name] = VideoReader(path)
            return reader.frames(start, timestamps, self.size)
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001  (PyAV raises many types for a damaged file)
            text = str(err)
            if str(path) not in text:
                text = (
                    f"{path} cannot be decoded ({type(err).__name__}: {err}): the video file is "
                    "truncated or damaged; restore it"
                )
            raise LeRobotFormatError(f"episode {index}, {name}: {text}") from err

    def close(self) -> None:
        for reader in self.videos.values():
            reader.close()


def _decode_images(column: pa.ChunkedArray, size: tuple[int, int] | None) -> np.ndarray:
    """An ``image`` feature's frames: PNG (or JPEG) bytes in the parquet rows."""
    import io

    from PIL import Image

    images = []
    for item in column.to_pylist():
        image = Image.open(io.BytesIO(item["bytes"])).convert("RGB")
        if size is not None:
            image = image.resize((size[1], size[0]), Image.Resampling.BOX)
        images.append(np.asarray(image))
    return np.stack(images)
