"""LeRobot's dataset format on disk: paths, columns, tables, and reading ``meta/info.json`` and
the episode and task tables (the writer is :mod:`s2policy.data.formats.lerobot.writer`).

Written from LeRobot's format, codebase version v3.0 (lerobot 0.4 and later)::

    meta/info.json                 codebase_version, fps, features {name: dtype, shape, names,
                                   info}, totals, data_path / video_path templates
    meta/stats.json                {feature: {min, max, mean, std, count, q01, q10, q50, q90, q99}}
    meta/tasks.parquet             task (pandas index), task_index
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks, the global
                                   ``index`` range, data and video file of the episode, the video
                                   ``from_timestamp``, per-episode stats/<feature>/<stat>
    data/chunk-000/file-000.parquet            one row per frame: every non-video feature,
                                   timestamp, frame_index, episode_index, index, task_index
    videos/<video key>/chunk-000/file-000.mp4  many episodes per file, back to back

Files roll over by size (``file-001``, ...; after ``chunks_size`` files, ``chunk-001``), never
splitting an episode. v2.0/v2.1 (read only) keep one parquet and one mp4 per episode and JSON Lines
tables (``meta/episodes.jsonl``, ``meta/tasks.jsonl``); their videos start at time 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from s2policy.fileio import read_json

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = f"data/{CHUNK_FILE}.parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = f"meta/episodes/{CHUNK_FILE}.parquet"
CHUNKS_SIZE = 1000  # files per chunk folder
#: The columns every LeRobot frame has.
DEFAULT_FEATURES = {
    name: {"dtype": dtype, "shape": [1], "names": None}
    for name, dtype in [
        ("timestamp", "float32"),
        ("frame_index", "int64"),
        ("episode_index", "int64"),
        ("index", "int64"),
        ("task_index", "int64"),
    ]
}
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
#: Our names, beside LeRobot's: our data key -> LeRobot feature; cameras <-> CAMERA_PREFIX + name;
#: any other array keeps its name.
FEATURES = {
    "state": "observation.state",
    "action": "action",
    "reward": "next.reward",
    "done": "next.done",
}
CAMERA_PREFIX = "observation.images."
#: Our file in an export: the store's attrs, per-step shapes and dtypes, per-episode meta dtypes.
SIDECAR = "meta/s2policy.json"
#: Root attribute of a store imported from a foreign LeRobot dataset: our array -> its LeRobot
#: feature name (an export uses these names again).
LEROBOT_NAMES = "lerobot_names"


class LeRobotFormatError(ValueError):
    """A folder that does not follow LeRobot's dataset format, or asks for what it lacks."""


def next_file(chunk: int, file: int) -> tuple[int, int]:
    """The chunk and file index after ``(chunk, file)``."""
    return (chunk, file + 1) if file + 1 < CHUNKS_SIZE else (chunk + 1, 0)


# ---------------------------------------------------------------------- columns
def to_column(values: np.ndarray, shape: list[int]) -> pa.Array:
    """Per-frame values ``(N, *shape)`` as the Arrow column LeRobot declares for ``shape``:
    a scalar column for ``[1]``, ``fixed_size_list<dtype>[D]`` for ``[D]``."""
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    return flat if list(shape) == [1] else pa.FixedSizeListArray.from_arrays(flat, shape[0])


def _kind(arrow: pa.DataType) -> str | None:
    """numpy's kind letter of an Arrow value type (None: not a number)."""
    if pa.types.is_floating(arrow):
        return "f"
    if pa.types.is_signed_integer(arrow):
        return "i"
    if pa.types.is_unsigned_integer(arrow):
        return "u"
    if pa.types.is_boolean(arrow):
        return "b"
    return None


def from_column(
    column: pa.ChunkedArray | pa.Array,
    shape: list[int],
    name: str,
    dtype: str | None = None,
    where: str | Path = "",
) -> np.ndarray:
    """A column of a data parquet back to ``(N, *shape)`` (``(N,)`` for a shape ``[1]``);
    ``dtype`` is the feature's dtype in ``meta/info.json``, which the column's values must have
    (same kind: float, signed or unsigned integer, bool); ``where`` names the file in errors."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(array)
    while pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type):
        array = array.flatten()
    if dtype is not None:
        try:
            want = np.dtype(dtype).kind
        except TypeError:
            want = None
        got = _kind(array.type)
        if want is not None and got != want and not (want in "iu" and got in "iu"):
            raise LeRobotFormatError(
                f"{where}: column {name!r} holds {array.type} values but meta/info.json declares "
                f"{dtype}: the data files do not match the dataset's info.json (written by "
                "another tool, or edited); fix the column or its dtype in meta/info.json"
            )
    values = array.to_numpy(zero_copy_only=False)
    per_row = int(np.prod(shape))
    if values.size != n * per_row:
        raise LeRobotFormatError(
            f"column {name!r} holds {values.size} values for {n} rows, not {per_row} per row "
            f"(shape {list(shape)} in meta/info.json)"
        )
    return values.reshape(n) if list(shape) == [1] else values.reshape(n, *shape)


def write_table(columns: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = {k: pa.array(v) if isinstance(v, np.ndarray) else v for k, v in columns.items()}
    pq.write_table(pa.table(table), path, compression="snappy")


def tasks_table(tasks: list[str]) -> pa.Table:
    """``meta/tasks.parquet`` as pandas writes LeRobot's DataFrame (index ``task``)."""
    meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    table = pa.table(
        {
            "task_index": pa.array(range(len(tasks)), pa.int64()),
            "task": pa.array(tasks, pa.string()),
        }
    )
    return table.replace_schema_metadata({b"pandas": json.dumps(meta).encode()})


# ---------------------------------------------------------------------- reading
#: Codebase versions this reader knows, by major version.
READABLE = {3: "v3.x", 2: "v2.0, v2.1"}


def read_info(root: Path) -> tuple[dict[str, Any], int]:
    """``meta/info.json`` and the major codebase version, after checking that it is one this
    reader knows and that the required keys are there."""
    path = root / INFO_PATH
    if not path.is_file():
        raise FileNotFoundError(f"no LeRobot dataset at {root}: {INFO_PATH} is missing")
    try:
        info = read_json(path, "LeRobot info.json", "restore the dataset's meta/ folder")
    except ValueError as err:
        raise LeRobotFormatError(str(err)) from None
    if not isinstance(info, dict):
        raise LeRobotFormatError(f"{path} holds a JSON {type(info).__name__}, not an object")
    missing = [k for k in ("codebase_version", "fps", "features") if k not in info]
    if missing:
        raise LeRobotFormatError(f"{path} lacks {missing}; it has {sorted(info)}")
    version = str(info["codebase_version"])
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        major = -1
    if major not in READABLE:
        known = ", ".join(READABLE.values())
        raise LeRobotFormatError(
            f"{root} has LeRobot codebase_version {version!r}, which this importer does not "
            f"know (it reads {known}); convert it with LeRobot to {CODEBASE_VERSION} first"
        )
    return info, major


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise LeRobotFormatError(f"{path} is missing")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_tasks(root: Path, major: int) -> list[str]:
    """Task strings by task_index."""
    if major == 2:
        rows = _read_jsonl(root / "meta/tasks.jsonl")
        pairs = [(int(r["task_index"]), str(r["task"])) for r in rows]
    else:
        path = root / TASKS_PATH
        if not path.is_file():
            raise LeRobotFormatError(f"{path} is missing")
        table = pq.read_table(path)
        column = _task_column(table)
        if column is None or "task_index" not in table.column_names:
            raise LeRobotFormatError(
                f"{path} needs the task strings (a task column, or the DataFrame index LeRobot "
                f"writes) and a task_index column; it has {table.column_names}"
            )
        pairs = list(zip(table["task_index"].to_pylist(), table[column].to_pylist(), strict=True))
    pairs.sort()
    if [i for i, _ in pairs] != list(range(len(pairs))):
        raise LeRobotFormatError(f"{root}: task indices are not 0..{len(pairs) - 1}")
    return [t for _, t in pairs]


def _task_column(table: pa.Table) -> str | None:
    """The column of ``meta/tasks.parquet`` holding the task strings, read as pandas (and so
    LeRobot's ``pd.read_parquet``) reads it: a ``task`` column, or the DataFrame's index — which
    LeRobot's writer leaves unnamed, so that pyarrow stores it as ``__index_level_0__`` and
    names it in the file's pandas metadata."""
    if "task" in table.column_names:
        return "task"
    meta = table.schema.pandas_metadata or {}
    index = [c for c in meta.get("index_columns", []) if isinstance(c, str)]

    def is_text(name: str) -> bool:
        if name not in table.column_names:
            return False
        kind = table.schema.field(name).type
        return pa.types.is_string(kind) or pa.types.is_large_string(kind)

    strings = [c for c in index or table.column_names if is_text(c)]
    return strings[0] if len(strings) == 1 else None


def read_episodes(root: Path, info: dict[str, Any], major: int, video_keys: Iterable[str]):
    """One dict per episode, in order: ``length``, ``data`` (its parquet file), and per video key
    ``(mp4 file, from_timestamp)`` in ``videos``; plus the extra columns of a v3 table."""
    video_keys = list(video_keys)
    if major == 2:
        rows = sorted(_read_jsonl(root / "meta/episodes.jsonl"), key=lambda r: r["episode_index"])
        size = int(info.get("chunks_size", CHUNKS_SIZE))
        out = []
        for row in rows:
            ep = int(row["episode_index"])
            names = {"episode_chunk": ep // size, "episode_index": ep}
            out.append(
                {
                    **row,
                    "data": root / info["data_path"].format(**names),
                    "videos": {
                        k: (root / info["video_path"].format(video_key=k, **names), 0.0)
                        for k in video_keys
                    },
                }
            )
        return out
    files = sorted((root / "meta/episodes").glob("*/*.parquet"))
    if not files:
        raise LeRobotFormatError(f"{root} has no meta/episodes/chunk-*/file-*.parquet")
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    need = ["episode_index", "length", "data/chunk_index", "data/file_index"]
    for k in video_keys:
        need += [f"videos/{k}/chunk_index", f"videos/{k}/file_index", f"videos/{k}/from_timestamp"]
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise LeRobotFormatError(f"{files[0]}: the episodes table lacks columns {missing}")
    columns = [c for c in table.column_names if not c.startswith("stats/")]
    out = []
    for row in table.select(columns).to_pylist():
        data = {"chunk_index": row["data/chunk_index"], "file_index": row["data/file_index"]}
        videos = {}
        for k in video_keys:
            where = {
                "chunk_index": row[f"videos/{k}/chunk_index"],
                "file_index": row[f"videos/{k}/file_index"],
            }
            path = root / info.get("video_path", VIDEO_PATH).format(video_key=k, **where)
            videos[k] = (path, float(row[f"videos/{k}/from_timestamp"]))
        out.append(
            {
                **row,
                "data": root / info.get("data_path", DATA_PATH).format(**data),
                "videos": videos,
            }
        )
    return out


class DataFiles:
    """The rows of one episode from the data parquet files; a file stays loaded while its
    episodes are read (episodes are read in order)."""

    def __init__(self, columns: list[str]):
        self.columns = columns
        self._path: Path | None = None
        self._table: pa.Table | None = None
        self._spans: dict[int, tuple[int, int]] = {}

    def episode(self, path: Path, episode: int) -> pa.Table:
        if path != self._path:
            if not path.is_file():
                raise LeRobotFormatError(f"data file {path} of episode {episode} is missing")
            table = pq.read_table(path)
            missing = [c for c in self.columns if c not in table.column_names]
            if missing:
                raise LeRobotFormatError(
                    f"{path} lacks the columns {missing} that meta/info.json declares; it has "
                    f"{table.column_names}"
                )
            self._path, self._table = path, table.select(self.columns)
            eps = table["episode_index"].to_numpy()
            bounds = np.flatnonzero(np.diff(eps)) + 1
            starts, stops = np.r_[0, bounds], np.r_[bounds, len(eps)]
            self._spans = {
                int(eps[a]): (int(a), int(b)) for a, b in zip(starts, stops, strict=True) if b > a
            }
        if episode not in self._spans:
            raise LeRobotFormatError(f"{path} holds no rows of episode {episode}")
        start, stop = self._spans[episode]
        return self._table.slice(start, stop - start)
