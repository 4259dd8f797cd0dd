"""Camera frames <-> mp4 files with PyAV, the way LeRobot stores a video feature.

Several episodes follow each other in one file at a constant frame rate: frame ``k`` of the file
has pts ``k`` in a ``1/fps`` time base (time ``k / fps``), so an episode that starts after ``n``
frames of the file starts at ``from_timestamp = n / fps`` and its frame ``j`` is the one at time
``from_timestamp + j / fps``. H.264 is written without B-frames (no reordering, no edit list) and
with a keyframe every ``g`` frames (cheap seeks), in yuv420p (even heights and widths).
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np

#: LeRobot's ``vcodec`` names -> PyAV encoders (PyAV's wheels ship both).
ENCODERS = {"h264": "libx264", "libsvtav1": "libsvtav1"}
PIX_FMT = "yuv420p"
#: LeRobot's default tolerance between a decoded frame's time and the one asked for.
TOLERANCE_S = 1e-4


class VideoWriter:
    """One mp4 file being written: :meth:`write` appends an episode's frames ``(T, H, W, 3)``."""

    def __init__(
        self, path: Path, fps: int, height: int, width: int, vcodec: str, crf: int, g: int
    ):
        if height % 2 or width % 2:
            raise ValueError(
                f"{PIX_FMT} video needs an even height and width, got {height}x{width}; "
                "resize the images first"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps, self.n_frames = path, fps, 0
        options = {"g": str(g), "crf": str(crf)}
        if vcodec == "h264":
            options["bf"] = "0"
        else:
            options["preset"] = "12"  # LeRobot's setting (svt-av1 maps it to its fastest)
        self._container = av.open(str(path), "w", options={"movflags": "faststart"})
        self._stream = self._container.add_stream(ENCODERS[vcodec], rate=fps, options=options)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, PIX_FMT

    def write(self, frames: np.ndarray) -> tuple[float, float]:
        """Append ``frames`` (T, H, W, 3) uint8; returns the episode's ``(from, to)`` times (s)."""
        start = self.n_frames
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.n_frames
            self._container.mux(self._stream.encode(frame))
            self.n_frames += 1
        return start / self.fps, self.n_frames / self.fps

    @property
    def size_bytes(self) -> int:
        """Bytes written so far (the encoder and muxer hold back a little)."""
        return self.path.stat().st_size if self.path.exists() else 0

    def close(self) -> None:
        self._container.mux(self._stream.encode(None))
        self._container.close()


def video_info(path: Path) -> dict:
    """The ``info`` block of a video feature in ``meta/info.json``, read from the file's stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return {
            "video.height": stream.height,
            "video.width": stream.width,
            "video.codec": stream.codec_context.codec.canonical_name,
            "video.pix_fmt": stream.codec_context.pix_fmt,
            "video.is_depth_map": False,
            "is_depth_map": False,
            "video.fps": int(stream.base_rate),
            "video.channels": 3,
            "has_audio": False,
        }


class VideoReader:
    """One mp4 file open for reading the frames of its episodes (at any position: it seeks)."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise FileNotFoundError(f"video file {path} is missing")
        self.path = path
        self._container = av.open(str(path))
        self._stream = self._container.streams.video[0]

    def frames(
        self,
        start: float,
        timestamps: np.ndarray,
        size: tuple[int, int] | None = None,
        tolerance: float = TOLERANCE_S,
    ) -> np.ndarray:
        """The frames at times ``start + timestamps`` ``(T, H, W, 3)`` uint8, each within
        ``tolerance`` s of the time asked for; ``size`` ``(H, W)`` resizes them (area filter)."""
        want = start + np.asarray(timestamps, np.float64)
        out: list[np.ndarray | None] = [None] * len(want)
        base = float(self._stream.time_base)
        self._container.seek(
            max(0, math.floor((want[0] - tolerance) / base)),
            stream=self._stream,
            backward=True,
            any_frame=False,
        )
        reformat = {"format": "rgb24"}
        if size is not None:
            reformat.update(height=size[0], width=size[1], interpolation="AREA")
        for frame in self._container.decode(self._stream):
            t = float(frame.pts * frame.time_base)
            if t > want[-1] + tolerance:
                break
            k = int(np.searchsorted(want, t))  # the nearest frame time asked for
            if k == len(want) or (k > 0 and t - want[k - 1] < want[k] - t):
                k -= 1
            if abs(want[k] - t) <= tolerance and out[k] is None:
                out[k] = frame.to_ndarray(**reformat)
        missing = [k for k, image in enumerate(out) if image is None]
        if missing:
            raise ValueError(
                f"{self.path} has no frame within {tolerance} s of {len(missing)} of the "
                f"{len(want)} frame times of this episode (first: {want[missing[0]]:.4f} s, "
                f"frame {missing[0]}): the video and the data rows disagree in length or timing"
            )
        return np.stack(out)

    def close(self) -> None:
        self._container.close()
