"""What a policy's data looks like — cameras and their image sizes, the state and action sizes and
names, the control rate, the task strings — read from a store, carried by a checkpoint, and
compared with a robot's or a simulated task's before anything runs (:class:`DataSpec`).

A simulated task's store records its task (``attrs["task"]``); any other store (a LeRobot or
robomimic import, a robot's logs) defines its own run: its spec is all a policy needs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class DataSpec:
    """The contract between a dataset, a checkpoint trained on it, and a robot it runs on."""

    #: Camera -> ``[height, width]`` of its frames (only the cameras a policy sees, in a
    #: checkpoint's spec).
    cameras: dict[str, list[int]]
    state_dim: int
    action_dim: int
    #: Names of the state / action dimensions, when the data gives them (else None).
    state_names: list[str] | None = None
    action_names: list[str] | None = None
    #: Control rate (Hz), when recorded.
    control_hz: float | None = None
    #: The dataset's task strings (language instructions), if any.
    tasks: list[str] = field(default_factory=list)
    #: The simulated task the data came from (``cube_pick``, ...); None for a dataset of its own.
    sim_task: str | None = None

    def __post_init__(self):
        self.cameras = {str(k): [int(v[0]), int(v[1])] for k, v in self.cameras.items()}
        self.state_dim, self.action_dim = int(self.state_dim), int(self.action_dim)
        for name in ("state_names", "action_names"):
            names, dim = getattr(self, name), getattr(self, name.replace("names", "dim"))
            if names is not None:
                names = [str(n) for n in names]
                setattr(self, name, names if len(names) == dim else None)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_store(cls, buffer, cameras: list[str] | None = None) -> DataSpec:
        """The spec of a ReplayBuffer store (``cameras``: those a policy uses; None: all)."""
        attrs = buffer.attrs
        keys = buffer.keys()
        for key in ("state", "action"):
            if key not in keys:
                raise ValueError(f"{buffer.path} has no {key!r} array; keys: {keys}")
        names = attrs.get("cameras") or [k for k in keys if _is_image(buffer, k)]
        chosen = list(names if cameras is None else cameras)
        sizes = {c: list(buffer[c].shape[1:3]) for c in chosen if c in keys}
        return cls(
            cameras=sizes,
            state_dim=int(np.prod(buffer["state"].shape[1:])),
            action_dim=int(np.prod(buffer["action"].shape[1:])),
            state_names=attrs.get("state_keys"),
            action_names=attrs.get("action_keys"),
            control_hz=attrs.get("control_hz"),
            tasks=list(attrs.get("tasks") or []),
            sim_task=attrs.get("task") if "env" in attrs else None,
        )

    @classmethod
    def from_robot(cls, spec: dict[str, Any]) -> DataSpec:
        """A robot's declared spec (:meth:`RobotInterface.spec`): ``cameras`` with one
        ``image_size`` or per-camera ``image_sizes``, ``action_dim``, and (newer robots)
        ``state_dim``, ``state_names``, ``action_names``."""
        sizes = spec.get("image_sizes") or {c: spec["image_size"] for c in spec["cameras"]}
        return cls(
            cameras=sizes,
            state_dim=int(spec.get("state_dim", -1)),
            action_dim=int(spec["action_dim"]),
            state_names=spec.get("state_names"),
            action_names=spec.get("action_names"),
            control_hz=spec.get("control_hz"),
            sim_task=spec.get("task"),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ------------------------------------------------------------------ comparison
    def mismatches(self, other: DataSpec) -> list[str]:
        """What ``other`` (a robot, a simulated task) lacks or has otherwise for a policy of
        this spec: missing cameras, other image sizes, state or action sizes, other names (where
        both give them). A state size of -1 (a robot that does not declare it) is not compared."""
        problems = []
        missing = [c for c in self.cameras if c not in other.cameras]
        if missing:
            problems.append(f"cameras {missing} missing (it has {sorted(other.cameras)})")
        sizes = [
            f"{c} {_hw(other.cameras[c])} instead of {_hw(hw)}"
            for c, hw in self.cameras.items()
            if c in other.cameras and other.cameras[c] != hw
        ]
        if sizes:
            problems.append(f"image size {', '.join(sizes)}")
        for what in ("state", "action"):
            mine, theirs = getattr(self, f"{what}_dim"), getattr(other, f"{what}_dim")
            if theirs >= 0 and mine != theirs:
                problems.append(f"{what} size {theirs} instead of {mine}")
            names, other_names = getattr(self, f"{what}_names"), getattr(other, f"{what}_names")
            if mine == theirs and names and other_names and names != other_names:
                problems.append(f"{what} names {other_names} instead of {names}")
        return problems

    def describe(self) -> str:
        """``cameras front 96x96; state 8 (j1, ...); action 4; 10 Hz``."""
        cams = ", ".join(f"{c} {_hw(hw)}" for c, hw in self.cameras.items()) or "none"
        parts = [f"cameras {cams}"]
        for what in ("state", "action"):
            names = getattr(self, f"{what}_names")
            dim = getattr(self, f"{what}_dim")
            shown = f" ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})" if names else ""
            parts.append(f"{what} {dim if dim >= 0 else '?'}{shown}")
        if self.control_hz:
            parts.append(f"{self.control_hz:g} Hz")
        return "; ".join(parts)


def _hw(hw: list[int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def _is_image(buffer, key: str) -> bool:
    arr = buffer[key]
    return arr.dtype == np.uint8 and len(arr.shape) == 4 and arr.shape[-1] == 3
