"""The base of every s2policy task: scene, gripper control, cameras, rendering, gymnasium API.

A task subclasses :class:`ManipulationEnv`, names its MJCF file (which includes
``assets/scene.xml``), its objects (free bodies whose body, joint and geom share one name) and
optionally a goal marker (a mocap body, drawn but never touched), and implements two small
methods: where its objects start (:meth:`ManipulationEnv._reset_task`) and when it has succeeded
(:meth:`ManipulationEnv._success`). The privileged state for experts and probes
(:meth:`ManipulationEnv._privileged`: every object's pose and size, and ``goal_pos``) comes from
the base. Domain randomization (``EnvConfig.randomization``, :mod:`envs.randomization`) is
applied at each reset.

Action ``(A,)`` in ``[-1, 1]``: end-effector delta position ``(dx, dy, dz)`` scaled by
``max_step_m``, a yaw delta scaled by ``max_yaw_step_rad`` (when ``yaw_control``), and a gripper
command (``-1`` fully open, ``+1`` fully closed, proportional in between). Deltas move a target
pose that position actuators track, clipped to the workspace.

Observation: one ``uint8 (H, W, 3)`` image per camera and ``state`` ``float32 (5,)`` =
end-effector ``x, y, z`` (m, table frame), yaw (rad) and the gap between the fingers (m).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np

from envs.randomization import Randomization, Randomizer, as_randomization
from envs.rendering import require_rendering

ASSETS = Path(__file__).resolve().parent / "assets"
CAMERAS = ("front", "wrist")
STATE_KEYS = ("ee_x", "ee_y", "ee_z", "ee_yaw", "gripper_gap")
#: The gantry's joints (and position actuators), in the order of the end-effector pose x, y, z, yaw.
POSE_JOINTS = ("gripper_x", "gripper_y", "gripper_z", "gripper_yaw")
JOINTS = (*POSE_JOINTS, "finger_left", "finger_right")
FINGER_OPEN = 0.045  # finger joint travel (m); the gap between the pads is twice the joint value
#: What :meth:`ManipulationEnv.sim_state` holds: everything the integrator needs to continue.
SIM_STATE = mujoco.mjtState.mjSTATE_INTEGRATION
#: Where tasks spawn objects (m): a 20 cm x 20 cm square centred under the gripper's home.
SPAWN_LOW, SPAWN_HIGH = np.array([-0.1, -0.1]), np.array([0.1, 0.1])


@dataclass
class EnvConfig:
    """Configuration shared by every task (also the ``env`` block of ``configs/task/*.yaml``)."""

    #: Camera image size ``(height, width)`` in pixels; non-square sizes are allowed.
    image_size: tuple[int, int] = (96, 96)
    #: Cameras rendered into the observation, from ``front`` and ``wrist``; empty = state only.
    cameras: tuple[str, ...] = CAMERAS
    #: Shadow-map size; software rendering (CPU) is dominated by it, 0 turns shadows off.
    shadow_size: int = 1024
    #: Control rate (Hz); each step runs ``1 / (control_hz * timestep)`` physics steps.
    control_hz: float = 10.0
    #: Include a yaw delta in the action (5-D action) or keep yaw fixed (4-D action).
    yaw_control: bool = True
    #: End the episode (``terminated``) at the first step where the task succeeds.
    terminate_on_success: bool = True
    #: Largest end-effector translation per step (m) at action magnitude 1.
    max_step_m: float = 0.03
    #: Largest yaw change per step (rad) at action magnitude 1.
    max_yaw_step_rad: float = 0.25
    #: Lower corner ``(x, y, z)`` (m) of the box the end-effector target is clipped to.
    workspace_low: tuple[float, float, float] = (-0.25, -0.25, 0.005)
    #: Upper corner ``(x, y, z)`` (m) of that box.
    workspace_high: tuple[float, float, float] = (0.25, 0.25, 0.35)
    #: Per-episode domain randomization; off by default (see :mod:`envs.randomization`).
    randomization: Randomization = dataclasses.field(default_factory=Randomization)

    def __post_init__(self):
        self.randomization = as_randomization(self.randomization)
        self.image_size = tuple(int(v) for v in self.image_size)
        self.cameras = tuple(self.cameras)
        self.workspace_low = tuple(float(v) for v in self.workspace_low)
        self.workspace_high = tuple(float(v) for v in self.workspace_high)
        if len(self.image_size) != 2 or min(self.image_size) < 8 or max(self.image_size) > 2048:
            raise ValueError(
                f"image_size must be (height, width) with sides in [8, 2048], got {self.image_size}"
            )
        unknown = [c for c in self.cameras if c not in CAMERAS]
        if unknown or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(
                f"cameras must be distinct names from {CAMERAS}, got {list(self.cameras)}"
            )
        if self.shadow_size < 0:
            raise ValueError(f"shadow_size must be >= 0, got {self.shadow_size}")
        if not 1.0 <= self.control_hz <= 100.0:
            raise ValueError(f"control_hz must be in [1, 100], got {self.control_hz}")
        if self.max_step_m <= 0 or self.max_yaw_step_rad <= 0:
            raise ValueError("max_step_m and max_yaw_step_rad must be positive")
        lo, hi = np.array(self.workspace_low), np.array(self.workspace_high)
        if lo.shape != (3,) or hi.shape != (3,) or not (lo < hi).all():
            raise ValueError(
                "workspace_low and workspace_high must be (x, y, z) with low < high, got "
                f"{self.workspace_low} and {self.workspace_high}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (lists instead of tuples), as stored in dataset attributes."""
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        d["cameras"] = list(self.cameras)
        d["workspace_low"] = list(self.workspace_low)
        d["workspace_high"] = list(self.workspace_high)
        d["randomization"] = self.randomization.to_dict()
        return d


def sample_apart(
    rng: np.random.Generator, n: int, low: np.ndarray, high: np.ndarray, min_dist: float
) -> np.ndarray:
    """``n`` points ``(n, 2)`` uniform in the box ``[low, high]``, pairwise at least ``min_dist``
    apart (rejection sampling; deterministic for a given generator state)."""
    for _ in range(1000):
        points = rng.uniform(low, high, size=(n, 2))
        gaps = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(n) * min_dist
        if (gaps >= min_dist).all():
            return points
    raise RuntimeError(f"cannot place {n} points {min_dist} m apart in [{low}, {high}]")


class ManipulationEnv(gym.Env):
    """Gripper-on-a-table task with the gymnasium API; see the module docstring."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}
    #: MJCF file in ``envs/assets`` (including ``scene.xml``); set by each task.
    xml: ClassVar[str]
    #: Scripted expert class of the task: ``expert(env, noise=..., seed=...)``.
    expert: ClassVar[type]
    #: The task's objects: names of free bodies, each with a joint and one geom of that name.
    objects: ClassVar[tuple[str, ...]]
    #: Mocap body marking where the first object's centre belongs (place, push), if any.
    goal_marker: ClassVar[str | None] = None

    def __init__(self, render_mode: str | None = None, **config: Any):
        self.config = EnvConfig(**config)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.model = mujoco.MjModel.from_xml_path(str(ASSETS / self.xml))
        self.data = mujoco.MjData(self.model)
        height, width = self.config.image_size
        self.model.vis.global_.offheight = max(self.model.vis.global_.offheight, height)
        self.model.vis.global_.offwidth = max(self.model.vis.global_.offwidth, width)
        self.model.vis.quality.shadowsize = self.config.shadow_size
        if self.config.shadow_size == 0:
            self.model.light_castshadow[:] = 0
        self.n_substeps = round(1.0 / (self.config.control_hz * self.model.opt.timestep))
        self.metadata = {**self.metadata, "render_fps": self.config.control_hz}

        self._qadr = {n: self.model.joint(n).qposadr[0] for n in JOINTS}
        self._act = {n: self.model.actuator(n).id for n in JOINTS}
        self._ee_site = self.model.site("ee").id
        self._finger_geoms = (self.model.geom("finger_left").id, self.model.geom("finger_right").id)
        self._target = np.zeros(4)  # x, y, z, yaw of the tracked end-effector target
        self._obj_qadr = {n: self.model.joint(n).qposadr[0] for n in self.objects}
        self._obj_geom = {n: self.model.geom(n).id for n in self.objects}
        self._marker = self.model.body(self.goal_marker).mocapid[0] if self.goal_marker else None
        self.randomizer = Randomizer(self.model, self.objects, self.config.randomization)

        action_dim = 5 if self.config.yaw_control else 4
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(action_dim,), dtype=np.float32)
        spaces = {
            cam: gym.spaces.Box(0, 255, shape=(height, width, 3), dtype=np.uint8)
            for cam in self.config.cameras
        }
        # Bounds beyond the reachable range (a measured pose may overshoot its clipped target).
        spaces["state"] = gym.spaces.Box(
            low=np.array([-1.0, -1.0, -1.0, -np.pi, -0.01], dtype=np.float32),
            high=np.array([1.0, 1.0, 1.0, np.pi, 0.2], dtype=np.float32),
        )
        self.observation_space = gym.spaces.Dict(spaces)
        self._renderer: mujoco.Renderer | None = None

    # ------------------------------------------------------------------ task hooks
    def _reset_task(self, rng: np.random.Generator) -> None:
        """Place the task's objects (write ``self.data.qpos``) for a new episode."""
        raise NotImplementedError

    def _privileged(self) -> dict[str, np.ndarray]:
        """Object state for scripted experts and probes (returned in ``info``, never observed):
        :meth:`object_info` of every object and ``goal_pos`` when the task has a goal."""
        info: dict[str, np.ndarray] = {}
        for name in self.objects:
            info.update(self.object_info(name))
        goal = self.goal_pos()
        if goal is not None:
            info["goal_pos"] = goal.astype(np.float32)
        return info

    def goal_pos(self) -> np.ndarray | None:
        """Where the first object's centre belongs: the goal marker's position at that object's
        resting height (``None`` without a goal); tasks with another goal override this."""
        if self._marker is None:
            return None
        return self.data.mocap_pos[self._marker] + [0.0, 0.0, self.half_size(self.objects[0])[2]]

    def set_goal_marker(self, xy: np.ndarray) -> None:
        """Move the goal marker to ``xy`` on the table."""
        self.data.mocap_pos[self._marker] = [xy[0], xy[1], 0.0]

    def _success(self) -> bool:
        raise NotImplementedError

    def _after_step(self) -> None:
        """Called after the physics of every step, before success is checked (task bookkeeping)."""

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        mujoco.mj_resetData(self.model, self.data)
        home = np.array([0.0, 0.0, 0.2, 0.0])
        home[:3] += rng.uniform([-0.03, -0.03, -0.02], [0.03, 0.03, 0.02])
        if self.randomizer.apply(rng):  # masses may have changed: recompute derived constants
            mujoco.mj_setConst(self.model, self.data)
            mujoco.mj_resetData(self.model, self.data)
        for i, name in enumerate(POSE_JOINTS):
            self.data.qpos[self._qadr[name]] = home[i]
        self.data.qpos[self._qadr["finger_left"]] = FINGER_OPEN
        self.data.qpos[self._qadr["finger_right"]] = FINGER_OPEN
        self._target = home.copy()
        self._set_ctrl(gripper=-1.0)
        self._reset_task(rng)
        mujoco.mj_forward(self.model, self.data)
        for _ in range(self.n_substeps):  # let objects settle on the table
            mujoco.mj_step(self.model, self.data)
        return self._observation(), self._info()

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != self.action_space.shape:
            raise ValueError(
                f"action must have shape {self.action_space.shape}, got {action.shape}"
            )
        if not np.isfinite(action).all():
            raise ValueError(f"action contains NaN or inf: {action}")
        action = np.clip(action, -1.0, 1.0)
        lo, hi = np.array(self.config.workspace_low), np.array(self.config.workspace_high)
        self._target[:3] = np.clip(self._target[:3] + action[:3] * self.config.max_step_m, lo, hi)
        if self.config.yaw_control:
            yaw = self._target[3] + action[3] * self.config.max_yaw_step_rad
            self._target[3] = np.clip(yaw, -np.pi / 2, np.pi / 2)
        self._set_ctrl(gripper=action[-1])
        for _ in range(self.n_substeps):
            mujoco.mj_step(self.model, self.data)
        self._after_step()
        success = self._success()
        info = self._info(success)
        terminated = bool(success and self.config.terminate_on_success)
        return self._observation(), float(success), terminated, False, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self._render(self.config.cameras[0] if self.config.cameras else "front")

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------ helpers
    @property
    def ee_pose(self) -> np.ndarray:
        """End-effector ``(x, y, z, yaw)`` as measured (not the commanded target)."""
        q = self.data.qpos
        return np.array([q[self._qadr[n]] for n in POSE_JOINTS])

    @property
    def gripper_gap(self) -> float:
        left = self.data.qpos[self._qadr["finger_left"]]
        right = self.data.qpos[self._qadr["finger_right"]]
        return float(left + right)

    def sim_state(self) -> np.ndarray:
        """The full MuJoCo integration state (time, qpos, qvel, controls, mocap poses, ...) as a
        flat ``float64`` vector: robomimic's ``states``; :meth:`set_sim_state` restores it."""
        state = np.empty(mujoco.mj_stateSize(self.model, SIM_STATE))
        mujoco.mj_getState(self.model, self.data, state, SIM_STATE)
        return state

    def set_sim_state(self, state: np.ndarray) -> None:
        """Restore a :meth:`sim_state` (model parameters, such as randomized colors or sizes, are
        not part of it: reset with the episode's seed first to get them back)."""
        state = np.asarray(state, dtype=np.float64)
        size = mujoco.mj_stateSize(self.model, SIM_STATE)
        if state.shape != (size,):
            raise ValueError(f"sim state must have shape ({size},), got {state.shape}")
        mujoco.mj_setState(self.model, self.data, state, SIM_STATE)
        mujoco.mj_forward(self.model, self.data)
        for i, name in enumerate(POSE_JOINTS):
            self._target[i] = self.data.ctrl[self._act[name]]

    def half_size(self, name: str) -> np.ndarray:
        """Half extents ``(3,)`` of object ``name`` this episode (randomization may scale them)."""
        return self.model.geom_size[self._obj_geom[name]].copy()

    def object_pose(self, name: str) -> tuple[np.ndarray, np.ndarray, float]:
        """Position ``(3,)``, quaternion ``(4,)`` (w, x, y, z) and yaw of object ``name``."""
        qpos = self.data.qpos[self._obj_qadr[name] : self._obj_qadr[name] + 7]
        w, x, y, z = qpos[3:]
        return (
            qpos[:3].copy(),
            qpos[3:].copy(),
            float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))),
        )

    def object_info(self, name: str) -> dict[str, np.ndarray]:
        """Privileged state of object ``name``: ``<name>_pos``, ``_quat``, ``_yaw``, ``_half``."""
        pos, quat, yaw = self.object_pose(name)
        return {
            f"{name}_pos": pos.astype(np.float32),
            f"{name}_quat": quat.astype(np.float32),
            f"{name}_yaw": np.float32(yaw),
            f"{name}_half": np.float32(self.half_size(name)[2]),
        }

    def place_object(self, name: str, xy: np.ndarray, yaw: float, z: float | None = None) -> None:
        """Put object ``name`` at ``xy`` with ``yaw``; on the table unless ``z`` is given."""
        qpos = self.data.qpos[self._obj_qadr[name] : self._obj_qadr[name] + 7]
        qpos[:3] = [xy[0], xy[1], self.half_size(name)[2] if z is None else z]
        qpos[3:] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]

    def on_table(self, name: str, tol_m: float = 0.005) -> bool:
        """Whether object ``name`` rests on the table (its centre within ``tol_m`` of its
        half-height above the table)."""
        return bool(abs(self.data.qpos[self._obj_qadr[name] + 2] - self.half_size(name)[2]) < tol_m)

    def object_at(self, name: str, pos: np.ndarray, xy_tol_m: float, z_tol_m: float) -> bool:
        """Whether the centre of object ``name`` lies within the tolerances of ``pos``."""
        obj = self.object_pose(name)[0]
        return bool(np.hypot(*(obj[:2] - pos[:2])) < xy_tol_m and abs(obj[2] - pos[2]) < z_tol_m)

    def fingers_touch(self, geom_id: int | str) -> bool:
        """Whether both finger pads are in contact with geom ``geom_id`` (an id or object name)."""
        if isinstance(geom_id, str):
            geom_id = self._obj_geom[geom_id]
        pairs = self.data.contact.geom[: self.data.ncon]
        touching = set()
        for g1, g2 in pairs:
            for finger in self._finger_geoms:
                if {g1, g2} == {finger, geom_id}:
                    touching.add(finger)
        return len(touching) == 2

    def _set_ctrl(self, gripper: float) -> None:
        ctrl = self.data.ctrl
        for i, name in enumerate(POSE_JOINTS):
            ctrl[self._act[name]] = self._target[i]
        finger = FINGER_OPEN * (1.0 - float(np.clip(gripper, -1.0, 1.0))) / 2.0
        ctrl[self._act["finger_left"]] = finger
        ctrl[self._act["finger_right"]] = finger

    def _state(self) -> np.ndarray:
        return np.array([*self.ee_pose, self.gripper_gap], dtype=np.float32)

    def _observation(self) -> dict[str, np.ndarray]:
        obs = {cam: self._render(cam) for cam in self.config.cameras}
        obs["state"] = self._state()
        return obs

    def _info(self, success: bool | None = None) -> dict[str, Any]:
        return {
            "success": self._success() if success is None else success,
            **self._privileged(),
        }

    def _render(self, camera: str) -> np.ndarray:
        if self._renderer is None:
            require_rendering()
            height, width = self.config.image_size
            self._renderer = mujoco.Renderer(self.model, height=height, width=width)
        self._renderer.update_scene(self.data, camera=camera)
        return self._renderer.render()
