"""Domain randomization: lighting, colors, camera poses, object size, mass and friction.

Every factor is a range ``[low, high]`` sampled uniformly once per episode (at reset, from the
episode's seeded generator, so a randomized episode is reproducible from its seed):

* *scale* factors multiply the nominal value (``light_scale``, ``object_scale``, ``mass_scale``,
  ``friction_scale``); ``[1, 1]`` is off;
* *jitter* factors are magnitudes of a change in a random direction (``light_dir_deg``,
  ``table_rgb``, ``object_rgb``, ``camera_pos_m``, ``camera_rot_deg``); ``[0, 0]`` is off.

Held-out settings are ranges that do not overlap the training ones (for example
``light_scale: [0.4, 0.6]`` against ``[0.8, 1.2]``), so evaluation sees values no demonstration
had; ``name`` labels them in results and reports (``configs/randomization/*.yaml``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import mujoco
import numpy as np

SCALES = ("light_scale", "object_scale", "mass_scale", "friction_scale")
JITTERS = ("light_dir_deg", "table_rgb", "object_rgb", "camera_pos_m", "camera_rot_deg")
_LIMITS = {  # largest sensible magnitude of each factor
    "light_scale": 3.0,
    "object_scale": 1.5,
    "mass_scale": 10.0,
    "friction_scale": 5.0,
    "light_dir_deg": 60.0,
    "table_rgb": 1.0,
    "object_rgb": 1.0,
    "camera_pos_m": 0.1,
    "camera_rot_deg": 20.0,
}


@dataclass
class Randomization:
    """Ranges of the per-episode randomization (the ``env.randomization`` block of a task)."""

    #: Label of these settings in results and reports (``off``, ``train``, ``heldout``, ...).
    name: str = "off"
    #: Multiplier of the light's and headlight's diffuse intensity.
    light_scale: tuple[float, float] = (1.0, 1.0)
    #: Rotation (degrees) of the key light's direction about a random axis.
    light_dir_deg: tuple[float, float] = (0.0, 0.0)
    #: Per-channel change of the table's color (added with a random sign, clipped to [0, 1]).
    table_rgb: tuple[float, float] = (0.0, 0.0)
    #: Per-channel change of each object's color (as ``table_rgb``).
    object_rgb: tuple[float, float] = (0.0, 0.0)
    #: Displacement (m) of each camera in a random direction.
    camera_pos_m: tuple[float, float] = (0.0, 0.0)
    #: Rotation (degrees) of each camera about a random axis.
    camera_rot_deg: tuple[float, float] = (0.0, 0.0)
    #: Multiplier of every object's size (one factor per object, all sides alike).
    object_scale: tuple[float, float] = (1.0, 1.0)
    #: Multiplier of every object's mass (and inertia).
    mass_scale: tuple[float, float] = (1.0, 1.0)
    #: Multiplier of every object's sliding friction.
    friction_scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self):
        for name in SCALES + JITTERS:
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 2 or not value[0] <= value[1]:
                raise ValueError(f"randomization.{name} must be [low, high], got {value}")
            if name in SCALES and value[0] <= 0:
                raise ValueError(f"randomization.{name} must be positive, got {value}")
            if value[0] < 0 or value[1] > _LIMITS[name]:
                raise ValueError(
                    f"randomization.{name} must lie in [0, {_LIMITS[name]}], got {value}"
                )
            setattr(self, name, value)

    @property
    def enabled(self) -> bool:
        off = {n: (1.0, 1.0) for n in SCALES} | {n: (0.0, 0.0) for n in JITTERS}
        return any(getattr(self, n) != v for n, v in off.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def as_randomization(value: Randomization | dict[str, Any] | None) -> Randomization | None:
    """``value`` as :class:`Randomization` (a dict, as hydra and stored attributes give it, is
    validated on the way); ``None`` stays ``None``."""
    return Randomization(**value) if isinstance(value, dict) else value


def _rotation(rng: np.random.Generator, degrees: tuple[float, float]) -> np.ndarray:
    """Quaternion of a rotation by an angle in ``degrees`` about a uniformly random axis."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    quat = np.empty(4)
    mujoco.mju_axisAngle2Quat(quat, axis, np.deg2rad(rng.uniform(*degrees)))
    return quat


def _signed(rng: np.random.Generator, magnitude: tuple[float, float], n: int) -> np.ndarray:
    return rng.choice([-1.0, 1.0], size=n) * rng.uniform(*magnitude, size=n)


class Randomizer:
    """Applies :class:`Randomization` to a model; remembers the nominal values to start from.

    Args:
        model: the task's ``MjModel`` (changed in place at each :meth:`apply`).
        objects: names of the task's object geoms (each the only geom of its free body).
        settings: the ranges.
    """

    def __init__(self, model: mujoco.MjModel, objects: tuple[str, ...], settings: Randomization):
        self.model, self.settings = model, settings
        self.geoms = np.array([model.geom(n).id for n in objects], dtype=int)
        self.bodies = model.geom_bodyid[self.geoms]
        self.table_mat = model.geom_matid[model.geom("table").id]
        self.nominal = {
            name: getattr(model, name).copy()
            for name in (
                "light_diffuse",
                "light_dir",
                "mat_rgba",
                "geom_rgba",
                "cam_pos",
                "cam_quat",
                "geom_size",
                "geom_rbound",
                "geom_aabb",
                "geom_friction",
                "body_mass",
                "body_inertia",
            )
        }
        self.nominal_headlight = model.vis.headlight.diffuse.copy()
        #: Values drawn at the last :meth:`apply` (for logs and tests).
        self.sample: dict[str, np.ndarray] = {}

    def apply(self, rng: np.random.Generator) -> bool:
        """Restore the nominal model, then draw and apply this episode's values (nothing is drawn
        from ``rng`` when randomization is off). Returns whether masses or sizes may differ from
        the last episode's, i.e. whether the model's derived constants need ``mj_setConst``."""
        m, s, nom = self.model, self.settings, self.nominal
        if not s.enabled and not self.sample:  # never randomized: the model is nominal
            return False
        for name, value in nom.items():
            getattr(m, name)[:] = value
        m.vis.headlight.diffuse[:] = self.nominal_headlight
        was_randomized, self.sample = bool(self.sample), {}
        if not s.enabled:
            return was_randomized
        n_obj, n_cam = len(self.geoms), m.ncam
        draw = self.sample
        draw["light_scale"] = rng.uniform(*s.light_scale)
        draw["light_dir"] = np.stack([_rotation(rng, s.light_dir_deg) for _ in range(m.nlight)])
        draw["table_rgb"] = _signed(rng, s.table_rgb, 3)
        draw["object_rgb"] = _signed(rng, s.object_rgb, 3 * n_obj).reshape(n_obj, 3)
        directions = rng.normal(size=(n_cam, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        draw["camera_pos"] = directions * rng.uniform(*s.camera_pos_m, size=(n_cam, 1))
        draw["camera_rot"] = np.stack([_rotation(rng, s.camera_rot_deg) for _ in range(n_cam)])
        draw["object_scale"] = rng.uniform(*s.object_scale, size=n_obj)
        draw["mass_scale"] = rng.uniform(*s.mass_scale, size=n_obj)
        draw["friction_scale"] = rng.uniform(*s.friction_scale, size=n_obj)

        m.light_diffuse[:] = np.clip(nom["light_diffuse"] * draw["light_scale"], 0, 1)
        m.vis.headlight.diffuse[:] = np.clip(self.nominal_headlight * draw["light_scale"], 0, 1)
        for i in range(m.nlight):
            mujoco.mju_rotVecQuat(m.light_dir[i], nom["light_dir"][i], draw["light_dir"][i])
        rgba = m.mat_rgba[self.table_mat]
        rgba[:3] = np.clip(nom["mat_rgba"][self.table_mat, :3] + draw["table_rgb"], 0, 1)
        m.geom_rgba[self.geoms, :3] = np.clip(
            nom["geom_rgba"][self.geoms, :3] + draw["object_rgb"], 0, 1
        )
        m.cam_pos[:] = nom["cam_pos"] + draw["camera_pos"]
        for i in range(n_cam):
            mujoco.mju_mulQuat(m.cam_quat[i], nom["cam_quat"][i], draw["camera_rot"][i])
        scale = draw["object_scale"][:, None]
        m.geom_size[self.geoms] = nom["geom_size"][self.geoms] * scale
        m.geom_rbound[self.geoms] = nom["geom_rbound"][self.geoms] * scale[:, 0]
        m.geom_aabb[self.geoms] = nom["geom_aabb"][self.geoms] * scale
        m.geom_friction[self.geoms, 0] = (
            nom["geom_friction"][self.geoms, 0] * draw["friction_scale"]
        )
        mass = draw["mass_scale"][:, None]
        m.body_mass[self.bodies] = nom["body_mass"][self.bodies] * mass[:, 0]
        m.body_inertia[self.bodies] = nom["body_inertia"][self.bodies] * mass * scale**2
        return True
