"""Domain randomization: off by default, sampled within its ranges, reproducible, restorable."""

from pathlib import Path

import mujoco
import numpy as np
import pytest
import yaml

import envs
from envs.randomization import JITTERS, SCALES, Randomization

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "randomization"


def preset(name):
    return yaml.safe_load((PRESETS / f"{name}.yaml").read_text())


def make(task="stack", **kw):
    kw.setdefault("image_size", (32, 32))
    kw.setdefault("shadow_size", 0)
    return envs.make(task, **kw)


def rotation_deg(q_from, q_to):
    dot = abs(float(np.dot(q_from, q_to)) / (np.linalg.norm(q_from) * np.linalg.norm(q_to)))
    return np.rad2deg(2 * np.arccos(min(1.0, dot)))


def test_off_by_default_and_identical_to_explicit_off():
    assert not envs.EnvConfig().randomization.enabled
    default, explicit = make(), make(randomization={"name": "off"})
    nominal = default.unwrapped.model.geom_size.copy()
    for seed in range(3):
        a, _ = default.reset(seed=seed)
        b, _ = explicit.reset(seed=seed)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(default.unwrapped.model.geom_size, nominal)


def test_samples_lie_in_their_ranges():
    settings = preset("heldout")
    env = make("stack", cameras=(), randomization=settings)
    raw = env.unwrapped
    model = raw.model
    rnd = raw.randomizer
    nominal = rnd.nominal
    cube, base = model.geom("cube").id, model.geom("base").id
    table_mat = model.geom_matid[model.geom("table").id]
    seen_scale = []
    for seed in range(30):
        _, info = env.reset(seed=seed)
        s = rnd.sample
        light = model.light_diffuse[0] / nominal["light_diffuse"][0]
        assert settings["light_scale"][0] - 1e-9 <= light[0] <= settings["light_scale"][1] + 1e-9
        u, v = nominal["light_dir"][0], model.light_dir[0]
        cos = np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))
        angle = np.rad2deg(np.arccos(np.clip(cos, -1, 1)))  # <= the rotation's angle
        assert angle <= settings["light_dir_deg"][1] + 1e-6
        for cam in range(model.ncam):
            shift = np.linalg.norm(model.cam_pos[cam] - nominal["cam_pos"][cam])
            assert settings["camera_pos_m"][0] - 1e-9 <= shift <= settings["camera_pos_m"][1] + 1e-9
            rot = rotation_deg(nominal["cam_quat"][cam], model.cam_quat[cam])
            lo, hi = settings["camera_rot_deg"]
            assert lo - 1e-6 <= rot <= hi + 1e-6
        for key in ("table_rgb", "object_rgb"):
            lo, hi = settings[key]
            assert ((np.abs(s[key]) >= lo) & (np.abs(s[key]) <= hi)).all()
        table = model.mat_rgba[table_mat, :3]
        np.testing.assert_allclose(
            table, np.clip(nominal["mat_rgba"][table_mat, :3] + s["table_rgb"], 0, 1)
        )
        for geom in (cube, base):
            scale = model.geom_size[geom] / nominal["geom_size"][geom]
            assert np.allclose(scale, scale[0])  # all sides alike
            lo, hi = settings["object_scale"]
            assert lo - 1e-9 <= scale[0] <= hi + 1e-9
            seen_scale.append(scale[0])
            body = model.geom_bodyid[geom]
            mass = model.body_mass[body] / nominal["body_mass"][body]
            assert settings["mass_scale"][0] - 1e-9 <= mass <= settings["mass_scale"][1] + 1e-9
            friction = model.geom_friction[geom, 0] / nominal["geom_friction"][geom, 0]
            lo, hi = settings["friction_scale"]
            assert lo - 1e-9 <= friction <= hi + 1e-9
        # The physics follows the scaled sizes: both cubes rest on the table at their new size.
        assert info["cube_half"] == pytest.approx(model.geom_size[cube][2], rel=1e-6)
        assert info["cube_pos"][2] == pytest.approx(model.geom_size[cube][2], abs=2e-3)
        assert info["base_pos"][2] == pytest.approx(model.geom_size[base][2], abs=2e-3)
    assert np.ptp(seen_scale) > 0.03  # the range is explored


def test_randomized_episodes_are_reproducible_and_vary_across_seeds():
    a, b = make(randomization=preset("train")), make(randomization=preset("train"))
    obs_a, _ = a.reset(seed=4)
    obs_b, _ = b.reset(seed=4)
    np.testing.assert_array_equal(obs_a["front"], obs_b["front"])
    np.testing.assert_array_equal(a.unwrapped.model.cam_pos, b.unwrapped.model.cam_pos)
    other, _ = a.reset(seed=5)
    assert np.abs(other["front"].astype(int) - obs_a["front"].astype(int)).mean() > 1


def test_nominal_model_is_restored_each_reset():
    env = make(randomization=preset("heldout"))
    raw = env.unwrapped
    env.reset(seed=0)
    changed = raw.model.geom_size.copy()
    raw.randomizer.settings = Randomization()  # switch off: the next reset restores everything
    env.reset(seed=0)
    assert not np.array_equal(changed, raw.model.geom_size)
    for name, value in raw.randomizer.nominal.items():
        np.testing.assert_array_equal(getattr(raw.model, name), value, err_msg=name)


def test_heldout_ranges_do_not_overlap_training_ranges():
    train, heldout = preset("train"), preset("heldout")
    assert train["name"] == "train" and heldout["name"] == "heldout"
    for key in SCALES + JITTERS:
        (a, b), (c, d) = train[key], heldout[key]
        assert b < c or d < a, f"{key}: heldout {heldout[key]} overlaps train {train[key]}"
    assert not Randomization(**preset("off")).enabled


@pytest.mark.parametrize("task", list(envs.TASKS))
@pytest.mark.parametrize("name", ["train", "heldout"])
def test_experts_cope_with_randomized_physics(task, name):
    env = make(task, cameras=(), randomization=preset(name))
    expert = env.unwrapped.expert(env, noise=0.1)
    wins = 0
    for seed in range(10):
        obs, info = env.reset(seed=seed)
        expert.reset(seed=seed)
        while True:
            obs, _, terminated, truncated, info = env.step(expert.act(obs, info))
            if terminated or truncated:
                break
        wins += info["success"]
    assert wins >= 9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"light_scale": (1.2, 0.8)}, "light_scale must be \\[low, high\\]"),
        ({"mass_scale": (0.0, 1.0)}, "mass_scale must be positive"),
        ({"camera_rot_deg": (0.0, 90.0)}, "camera_rot_deg must lie in"),
        ({"table_rgb": (-0.1, 0.1)}, "table_rgb must lie in"),
        ({"object_scale": (1.0,)}, "object_scale must be \\[low, high\\]"),
    ],
)
def test_bad_ranges_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Randomization(**kwargs)
    with pytest.raises(ValueError, match=match):
        envs.EnvConfig(randomization=kwargs)


def test_mass_change_reaches_the_solver():
    env = make("cube_pick", cameras=(), randomization={"mass_scale": (4.0, 4.0)})
    env.reset(seed=0)
    raw = env.unwrapped
    body = raw.model.body("cube").id
    assert raw.model.body_mass[body] == pytest.approx(0.2)
    assert raw.model.body_subtreemass[body] == pytest.approx(0.2)  # mj_setConst ran
    raw.randomizer.settings = Randomization()  # back to nominal: the constants follow
    env.reset(seed=0)
    assert raw.model.body_subtreemass[body] == pytest.approx(0.05)
    mujoco.mj_forward(raw.model, raw.data)
