"""LeRobot datasets written the way LeRobot's own ``LeRobotDataset`` writer writes them (the
test inputs of tests/data/test_lerobot_upstream.py and test_own_robot.py; also a command:
``python tests/data/lerobot_upstream.py <folder> [v3.0|v2.1] [episodes]``): lerobot
0.4.4 (codebase v3.0) and lerobot 0.3.3 (v2.1), read from their source (``lerobot_dataset.py``,
``utils.py``, ``video_utils.py``; the `lerobot` package cannot be installed beside our torch).

What they do, and so what these fixtures do:

- the task table is a pandas DataFrame ``{"task_index": range(n)}`` whose *unnamed* index is the
  task strings, written with ``DataFrame.to_parquet`` (v3.0; pyarrow names the index column
  ``__index_level_0__``), or ``meta/tasks.jsonl`` (v2.1);
- a task may change within an episode (``add_frame(frame)`` with ``frame["task"]``): every frame
  keeps its own ``task_index``, new tasks get the next indices;
- data parquet: ``fixed_size_list<float>[n]`` vectors, image features as
  ``struct<bytes: binary, path: string>`` holding PNG bytes, float32 ``timestamp`` =
  ``frame_index / fps``, int64 indices; one row group per episode (v3.0: one file; v2.1: one file
  per episode);
- videos: every episode encoded on its own (PyAV, ``libsvtav1``, ``g=2``, ``crf=30``,
  ``preset=12`` in v0.4.4, ``yuv420p``, frames ``VideoFrame.from_image``), then (v3.0) concatenated
  into one file by stream copy, the episode starting at the previous one's end
  (``from_timestamp``); v2.1 keeps one file per episode starting at 0;
- ``meta/info.json`` with the video feature's ``info`` block, the episodes table (v3.0 parquet,
  written with ``pa.Table.from_pydict``; v2.1 ``episodes.jsonl`` + ``episodes_stats.jsonl``).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

FPS = 10
TOP, WRIST = "observation.images.top", "observation.images.wrist"
STATE_NAMES = [f"joint{i}" for i in range(7)] + ["gripper"]
TASK_A, TASK_B = "pick up the red block", "put it in the bin"


@dataclass
class Episode:
    top: np.ndarray  # (T, 64, 64, 3) uint8: the video camera
    wrist: np.ndarray  # (T, 32, 32, 3) uint8: the image camera
    state: np.ndarray  # (T, 8) float32
    env_state: np.ndarray  # (T, 3) float32
    action: np.ndarray  # (T, 4) float32
    tasks: list[str]  # per frame


def make_episodes(seed: int = 0, n: int = 3) -> list[Episode]:
    """``n`` episodes of a 4-dof arm (12, 9, 15, then 10-16 frames); episode 1's task changes
    after its 5th frame."""
    rng = np.random.default_rng(seed)
    out = []
    lengths = [12, 9, 15, *rng.integers(10, 17, max(0, n - 3)).tolist()][:n]
    for ep, n in enumerate(lengths):
        yy, xx = np.mgrid[0:64, 0:64]
        top = np.zeros((n, 64, 64, 3), np.uint8)
        for t in range(n):  # a smooth background and a moving block: compressible video
            top[t, ..., 0] = (xx * 3 + 20 * ep) % 256
            top[t, ..., 1] = (yy * 2 + 5 * t) % 256
            top[t, ..., 2] = 90
            x0 = 8 + 3 * t % 40
            top[t, 20:34, x0 : x0 + 14] = (220, 30, 30)
        wrist = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        tasks = [TASK_A] * n if ep != 1 else [TASK_A] * 5 + [TASK_B] * (n - 5)
        out.append(
            Episode(
                top, wrist,
                rng.normal(size=(n, 8)).astype(np.float32),
                rng.normal(size=(n, 3)).astype(np.float32),
                rng.uniform(-1, 1, size=(n, 4)).astype(np.float32),
                tasks,
            )
        )  # fmt: skip
    return out


def _features(version: str, video_info: dict) -> dict:
    vec = {"dtype": "float32"}
    features = {
        TOP: {"dtype": "video", "shape": [64, 64, 3], "names": ["height", "width", "channels"],
              "info": video_info},
        WRIST: {"dtype": "image", "shape": [32, 32, 3], "names": ["height", "width", "channels"]},
        "observation.state": {**vec, "shape": [8], "names": STATE_NAMES},
        "observation.environment_state": {**vec, "shape": [3], "names": ["x", "y", "z"]},
        "action": {**vec, "shape": [4], "names": ["dx", "dy", "dz", "grip"]},
    }  # fmt: skip
    defaults = [("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                ("index", "int64"), ("task_index", "int64")]  # fmt: skip
    for name, dtype in defaults:
        features[name] = {"dtype": dtype, "shape": [1], "names": None}
    return features


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _encode(frames: np.ndarray, path: Path, preset: bool) -> None:
    """LeRobot's ``encode_video_frames``: libsvtav1, g 2, crf 30 (preset 12 in 0.4.4)."""
    options = {"g": "2", "crf": "30", **({"preset": "12"} if preset else {})}
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libsvtav1", FPS, options=options)
        stream.pix_fmt = "yuv420p"
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_image(Image.fromarray(image).convert("RGB"))))
        out.mux(stream.encode())


def _duration(path: Path) -> float:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return float(s.duration * s.time_base)


def _concatenate(parts: list[Path], out: Path) -> None:
    """ffmpeg's concat demuxer with stream copy: each file's packets shifted by the durations
    of the files before it, no re-encoding."""
    with av.open(str(parts[0])) as first:
        template = first.streams.video[0]
        with av.open(str(out), "w", options={"movflags": "faststart"}) as oc:
            ostream = oc.add_stream_from_template(template, opaque=True)
            offset = 0.0
            for part in parts:
                with av.open(str(part)) as ic:
                    s = ic.streams.video[0]
                    shift = round(offset / s.time_base)
                    for packet in ic.demux(s):
                        if packet.dts is None:
                            continue
                        packet.pts += shift
                        packet.dts += shift
                        packet.stream = ostream
                        oc.mux(packet)
                offset += _duration(part)


def _table(episodes: list[Episode], which: list[int], task_index, start_index: int) -> pa.Table:
    """The data rows of episodes ``which`` (one table; the writer adds one row group each)."""
    cols: dict[str, list] = {k: [] for k in (WRIST, "observation.state",
                             "observation.environment_state", "action", "timestamp", "frame_index",
                             "episode_index", "index", "task_index")}  # fmt: skip
    index = start_index
    for ep in which:
        e = episodes[ep]
        for t in range(len(e.action)):
            cols[WRIST].append({"bytes": _png(e.wrist[t]), "path": f"frame-{t:06d}.png"})
            cols["observation.state"].append(e.state[t])
            cols["observation.environment_state"].append(e.env_state[t])
            cols["action"].append(e.action[t])
            cols["timestamp"].append(t / FPS)
            cols["frame_index"].append(t)
            cols["episode_index"].append(ep)
            cols["index"].append(index)
            cols["task_index"].append(task_index[e.tasks[t]])
            index += 1

    def vectors(rows, n):
        flat = pa.array(np.stack(rows).reshape(-1), pa.float32())
        return pa.FixedSizeListArray.from_arrays(flat, n)

    return pa.table({
        WRIST: pa.array(cols[WRIST], pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "observation.state": vectors(cols["observation.state"], 8),
        "observation.environment_state": vectors(cols["observation.environment_state"], 3),
        "action": vectors(cols["action"], 4),
        "timestamp": pa.array(cols["timestamp"], pa.float32()),
        **{k: pa.array(cols[k], pa.int64())
           for k in ("frame_index", "episode_index", "index", "task_index")},
    })  # fmt: skip


def _task_indices(episodes: list[Episode]) -> dict[str, int]:
    index: dict[str, int] = {}
    for e in episodes:
        for task in dict.fromkeys(e.tasks):  # new tasks get the next indices
            index.setdefault(task, len(index))
    return index


def _info(version: str, episodes: list[Episode], tasks: dict, video: Path) -> dict:
    from s2policy.data.formats.lerobot.video import video_info

    vinfo = {k: v for k, v in video_info(video).items() if k != "is_depth_map"}
    frames = sum(len(e.action) for e in episodes)
    info = {"codebase_version": version, "robot_type": "my_arm", "total_episodes": len(episodes),
            "total_frames": frames, "total_tasks": len(tasks)}  # fmt: skip
    if version == "v2.1":
        info |= {"total_videos": len(episodes), "total_chunks": 1, "chunks_size": 1000}
        info |= {"fps": FPS, "splits": {"train": f"0:{len(episodes)}"},
                 "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                 "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/"
                               "episode_{episode_index:06d}.mp4"}  # fmt: skip
    else:
        info |= {"chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
                 "fps": FPS, "splits": {"train": f"0:{len(episodes)}"},
                 "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                 "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/"
                               "file-{file_index:03d}.mp4"}  # fmt: skip
    info["features"] = _features(version, vinfo)
    return info


def _stats(e: Episode) -> dict:
    def s(x):
        return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
                "std": x.std(0).tolist(), "count": [len(x)]}  # fmt: skip

    return {"observation.state": s(e.state), "observation.environment_state": s(e.env_state),
            "action": s(e.action)}  # fmt: skip


def write_v30(root: Path, episodes: list[Episode]) -> Path:
    """lerobot 0.4.4's layout."""
    tasks = _task_indices(episodes)
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    (root / "data/chunk-000").mkdir(parents=True)
    video = root / f"videos/{TOP}/chunk-000/file-000.mp4"
    video.parent.mkdir(parents=True)
    parts, bounds, start = [], [], 0.0
    for i, e in enumerate(episodes):
        part = root / f"tmp_{i:03d}.mp4"
        _encode(e.top, part, preset=True)
        parts.append(part)
        bounds.append((start, start + _duration(part)))
        start = bounds[-1][1]
    _concatenate(parts, video)
    for part in parts:
        part.unlink()
    # the task table: a DataFrame with the task strings as its unnamed index
    frame = pd.DataFrame({"task_index": list(tasks.values())}, index=list(tasks))
    frame.to_parquet(root / "meta/tasks.parquet")
    writer, index = None, 0
    for ep in range(len(episodes)):
        table = _table(episodes, [ep], tasks, index)
        index += table.num_rows
        if writer is None:
            writer = pq.ParquetWriter(root / "data/chunk-000/file-000.parquet", table.schema,
                                      compression="snappy", use_dictionary=True)  # fmt: skip
        writer.write_table(table)
    writer.close()
    rows: dict[str, list] = {}
    offset = 0
    for ep, e in enumerate(episodes):
        n = len(e.action)
        row = {
            "episode_index": ep, "tasks": list(dict.fromkeys(e.tasks)), "length": n,
            "data/chunk_index": 0, "data/file_index": 0, "dataset_from_index": offset,
            "dataset_to_index": offset + n, f"videos/{TOP}/chunk_index": 0,
            f"videos/{TOP}/file_index": 0, f"videos/{TOP}/from_timestamp": bounds[ep][0],
            f"videos/{TOP}/to_timestamp": bounds[ep][1],
        }  # fmt: skip
        for feature, stats in _stats(e).items():
            for stat, value in stats.items():
                row[f"stats/{feature}/{stat}"] = value
        row |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        for k, v in row.items():
            rows.setdefault(k, []).append(v)
        offset += n
    pq.write_table(pa.Table.from_pydict(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    info = _info("v3.0", episodes, tasks, video)
    (root / "meta/info.json").write_text(json.dumps(info, indent=4, ensure_ascii=False))
    (root / "meta/stats.json").write_text(json.dumps(_stats(episodes[0]), indent=4))
    return root


def write_v21(root: Path, episodes: list[Episode]) -> Path:
    """lerobot 0.3.3's layout: one data file and one video per episode, JSON Lines tables."""
    tasks = _task_indices(episodes)
    (root / "meta").mkdir(parents=True)
    (root / "data/chunk-000").mkdir(parents=True)
    videos = root / f"videos/chunk-000/{TOP}"
    videos.mkdir(parents=True)
    index = 0
    for ep, e in enumerate(episodes):
        _encode(e.top, videos / f"episode_{ep:06d}.mp4", preset=False)
        table = _table(episodes, [ep], tasks, index)
        index += table.num_rows
        pq.write_table(table, root / f"data/chunk-000/episode_{ep:06d}.parquet")

    def jsonl(name, lines):
        (root / "meta" / name).write_text(
            "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        )

    jsonl("tasks.jsonl", [{"task_index": i, "task": t} for t, i in tasks.items()])
    listed = [
        {"episode_index": ep, "tasks": list(dict.fromkeys(e.tasks)), "length": len(e.action)}
        for ep, e in enumerate(episodes)
    ]
    jsonl("episodes.jsonl", listed)
    jsonl("episodes_stats.jsonl",
          [{"episode_index": ep, "stats": _stats(e)} for ep, e in enumerate(episodes)])  # fmt: skip
    info = _info("v2.1", episodes, tasks, videos / "episode_000000.mp4")
    (root / "meta/info.json").write_text(json.dumps(info, indent=4, ensure_ascii=False))
    return root


def main(argv: list[str]) -> None:
    folder = Path(argv[0])
    version = argv[1] if len(argv) > 1 else "v3.0"
    episodes = make_episodes(n=int(argv[2]) if len(argv) > 2 else 3)
    (write_v30 if version == "v3.0" else write_v21)(folder, episodes)
    print(f"{folder}: {len(episodes)} episodes written as lerobot {version} writes them")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
