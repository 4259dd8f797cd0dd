"""A LeRobot dataset (codebase v3.0) written episode by episode: :class:`DatasetWriter`.

The layout and the rules it follows are in :mod:`s2policy.data.formats.lerobot.format`: frames in
data parquet files (one row group per episode), each video feature's frames in its own mp4 files
(episodes back to back), one row per episode in the episodes table, statistics per episode and
aggregated, ``meta/info.json`` written last with the exact totals.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from s2policy.data.formats.lerobot import format as fmt
from s2policy.data.formats.lerobot.video import VideoWriter, video_info


class DatasetWriter:
    """Writes the LeRobot dataset folder ``root``; :meth:`add_episode` in order, then
    :meth:`finish`."""

    def __init__(
        self,
        root: Path,
        fps: int,
        tasks: list[str],
        vcodec: str = "h264",
        crf: int = 18,
        g: int = 2,
        data_file_mb: float = 100,
        video_file_mb: float = 200,
    ):
        self.root, self.fps, self.tasks = root, fps, tasks
        self._video_args = (vcodec, crf, g)
        self._limits = (data_file_mb, video_file_mb)
        self.n_episodes = self.n_frames = 0
        self._features: dict[str, dict[str, Any]] = {}
        self._rows: dict[str, list] = {}
        self._stats: dict[str, list] = {}
        self._data_at, self._data_bytes = (0, 0), 0.0  # the data file being written
        self._data: pq.ParquetWriter | None = None
        self._videos: dict[str, tuple[tuple[int, int], VideoWriter]] = {}

    def add_episode(
        self,
        columns: dict[str, np.ndarray],
        videos: dict[str, np.ndarray],
        task_index: np.ndarray,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """One episode: ``columns`` feature -> per-frame values ``(T, ...)`` (more than one
        dimension per frame is flattened), ``videos`` feature -> frames ``(T, H, W, 3)`` uint8,
        ``task_index`` ``(T,)``, ``extra`` more columns of its row in the episodes table."""
        n, ep, start = len(task_index), self.n_episodes, self.n_frames
        clash = sorted(set(extra or {}) & {"episode_index", "tasks", "length"})
        if clash:
            raise ValueError(f"episode columns {clash} are LeRobot's own; rename them")
        if n and (min(task_index) < 0 or max(task_index) >= len(self.tasks)):
            raise ValueError(
                f"episode {ep} has task indices outside 0..{len(self.tasks) - 1} (its tasks: "
                f"{len(self.tasks)})"
            )
        frame_index = np.arange(n, dtype=np.int64)
        default = {
            "timestamp": (frame_index / self.fps).astype(np.float32),
            "frame_index": frame_index,
            "episode_index": np.full(n, ep, np.int64),
            "index": np.arange(start, start + n, dtype=np.int64),
            "task_index": np.asarray(task_index, np.int64),
        }
        for name, values in columns.items():
            shape = [int(np.prod(values.shape[1:]))] if values.ndim > 1 else [1]
            self._declare(name, {"dtype": values.dtype.name, "shape": shape, "names": None})
        row = {
            "episode_index": ep,
            "tasks": sorted({self.tasks[t] for t in default["task_index"]}),
            "length": n,
            **self._write_data({**columns, **default}),
            "dataset_from_index": start,
            "dataset_to_index": start + n,
        }
        for name, values in {**columns, **default}.items():
            self._stats.setdefault(name, []).append(frame_stats(values))
        for name, frames in videos.items():
            h, w = frames.shape[1:3]
            self._declare(
                name,
                {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"]},
            )
            row.update(self._write_video(name, frames))
            sample = frames[:: max(1, n // 100)]
            self._stats.setdefault(name, []).append(frame_stats(sample, image=True))
        for name in [*columns, *default, *videos]:
            for stat, value in self._stats[name][-1].items():
                row[f"stats/{name}/{stat}"] = value.tolist()
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
        for key, value in {**row, **(extra or {})}.items():
            self._rows.setdefault(key, []).append(value)
        self.n_episodes += 1
        self.n_frames += n

    def _declare(self, name: str, feature: dict[str, Any]) -> None:
        known = self._features.setdefault(name, feature)
        if known["dtype"] != feature["dtype"] or known["shape"] != feature["shape"]:
            raise ValueError(
                f"feature {name!r} of episode {self.n_episodes} has dtype {feature['dtype']} and "
                f"shape {feature['shape']}, earlier episodes {known['dtype']} {known['shape']}"
            )

    def _write_data(self, columns: dict[str, np.ndarray]) -> dict[str, int]:
        """The episode's rows (one row group) in the current data file, or in a new one when
        they would take it past its size."""
        shapes = {k: f["shape"] for k, f in self._features.items()}
        table = pa.table({k: fmt.to_column(v, shapes.get(k, [1])) for k, v in columns.items()})
        nbytes = float(sum(v.nbytes for v in columns.values()))  # uncompressed: an upper bound
        if self._data is not None and self._data_bytes + nbytes >= self._limits[0] * 1e6:
            self._data.close()
            self._data, self._data_at = None, fmt.next_file(*self._data_at)
        at = self._data_at
        if self._data is None:
            path = self.root / fmt.DATA_PATH.format(chunk_index=at[0], file_index=at[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data = pq.ParquetWriter(path, table.schema, compression="snappy")
            self._data_bytes = 0.0
        self._data.write_table(table)
        self._data_bytes += nbytes
        return {"data/chunk_index": at[0], "data/file_index": at[1]}

    def _write_video(self, name: str, frames: np.ndarray) -> dict[str, Any]:
        at, writer = self._videos.get(name, ((0, 0), None))
        if writer is not None and writer.size_bytes >= self._limits[1] * 1e6:
            writer.close()
            at, writer = fmt.next_file(*at), None
        if writer is None:
            path = self.root / fmt.VIDEO_PATH.format(
                video_key=name, chunk_index=at[0], file_index=at[1]
            )
            writer = VideoWriter(path, self.fps, *frames.shape[1:3], *self._video_args)
        self._videos[name] = (at, writer)
        start, stop = writer.write(frames)
        return {
            f"videos/{name}/chunk_index": at[0],
            f"videos/{name}/file_index": at[1],
            f"videos/{name}/from_timestamp": start,
            f"videos/{name}/to_timestamp": stop,
        }

    def finish(
        self, names: dict[str, list[str]] | None = None, robot_type: str | None = None
    ) -> dict[str, Any]:
        """Close the files and write the tables, statistics and ``meta/info.json`` (returned);
        ``names`` gives features' dimension names (``observation.state``: ``[x, y, ...]``)."""
        if self.n_episodes == 0:
            raise ValueError("a LeRobot dataset needs at least one episode")
        self._data.close()
        for name, (_, writer) in self._videos.items():
            writer.close()
            first = fmt.VIDEO_PATH.format(video_key=name, chunk_index=0, file_index=0)
            self._features[name]["info"] = video_info(self.root / first)
        rows = {  # numpy scalars (extra columns) keep their dtype
            k: np.asarray(v) if isinstance(v[0], np.generic) else v for k, v in self._rows.items()
        }
        fmt.write_table(rows, self.root / fmt.EPISODES_PATH.format(chunk_index=0, file_index=0))
        pq.write_table(fmt.tasks_table(self.tasks), self.root / fmt.TASKS_PATH)
        stats = {k: aggregate_stats(v) for k, v in self._stats.items()}
        (self.root / fmt.STATS_PATH).write_text(json.dumps(stats_to_json(stats), indent=2))
        for name, dims in (names or {}).items():
            feature = self._features.get(name)
            if feature is not None and dims is not None and len(dims) == feature["shape"][0]:
                feature["names"] = list(dims)
        info = {
            "codebase_version": fmt.CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": self.n_episodes,
            "total_frames": self.n_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": fmt.CHUNKS_SIZE,
            "data_files_size_in_mb": self._limits[0],
            "video_files_size_in_mb": self._limits[1],
            "fps": self.fps,
            "splits": {"train": f"0:{self.n_episodes}"},
            "data_path": fmt.DATA_PATH,
            "video_path": fmt.VIDEO_PATH if self._videos else None,
            "features": {**self._features, **fmt.DEFAULT_FEATURES},
        }
        (self.root / fmt.INFO_PATH).write_text(json.dumps(info, indent=2))
        return info


def frame_stats(values: np.ndarray, image: bool = False) -> dict[str, np.ndarray]:
    """LeRobot's statistics of one feature over frames ``(N, ...)``: per dimension, or per
    channel ``(3, 1, 1)`` of images scaled to [0, 1]."""
    values = np.asarray(values)
    if image:
        x = values.reshape(-1, 3).astype(np.float64) / 255.0
    else:
        x = values.reshape(len(values), -1).astype(np.float64)
    stats = {
        "min": x.min(0),
        "max": x.max(0),
        "mean": x.mean(0),
        "std": x.std(0),
        **{f"q{round(q * 100):02d}": np.quantile(x, q, axis=0) for q in fmt.QUANTILES},
    }
    shape = (3, 1, 1) if image else (x.shape[1],)  # as the feature: flattened per frame
    stats = {k: v.reshape(shape) for k, v in stats.items()}
    stats["count"] = np.array([len(values)], np.int64)
    return stats


def aggregate_stats(episodes: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Episodes' statistics of one feature combined as LeRobot combines them: count-weighted
    means, pooled variance, min of minima, max of maxima; quantiles as count-weighted means of
    the episodes' quantiles (an approximation, as LeRobot's is)."""
    counts = np.array([e["count"][0] for e in episodes], np.float64)
    w = counts / counts.sum()

    def weighted(key: str) -> np.ndarray:
        return np.tensordot(w, np.stack([e[key] for e in episodes]), axes=1)

    mean = weighted("mean")
    var = np.tensordot(
        w, np.stack([e["std"] ** 2 + (e["mean"] - mean) ** 2 for e in episodes]), axes=1
    )
    out = {
        "min": np.min([e["min"] for e in episodes], axis=0),
        "max": np.max([e["max"] for e in episodes], axis=0),
        "mean": mean,
        "std": np.sqrt(var),
        "count": np.array([int(counts.sum())], np.int64),
    }
    out.update({k: weighted(k) for k in episodes[0] if k.startswith("q")})
    return out


def stats_to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    return {f: {k: np.asarray(v).tolist() for k, v in s.items()} for f, s in stats.items()}
