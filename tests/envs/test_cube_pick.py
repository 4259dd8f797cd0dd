import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.cube_pick import CubePickEnv
from envs.expert import wrap_grasp_yaw

CUBE_HALF = 0.02


def make(**kw):
    kw.setdefault("image_size", (32, 32))
    kw.setdefault("shadow_size", 256)
    return envs.make("cube_pick", **kw)


def run_expert(env, seed, noise=0.0, max_steps=80):
    obs, info = env.reset(seed=seed)
    expert = env.unwrapped.expert(env, noise=noise)
    expert.reset(seed=seed)
    trace = []
    for _ in range(max_steps):
        action = expert.act(obs, info)
        obs, reward, terminated, truncated, info = env.step(action)
        trace.append((obs, reward, info))
        if terminated or truncated:
            break
    return trace


def test_check_env_passes():
    env = make()
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_registered_id_and_spaces():
    env = gym.make("s2policy/CubePick-v0", image_size=(24, 40), cameras=("wrist",))
    obs, info = env.reset(seed=0)
    assert set(obs) == {"wrist", "state"}
    assert obs["wrist"].shape == (24, 40, 3) and obs["wrist"].dtype == np.uint8
    assert obs["state"].shape == (5,) and obs["state"].dtype == np.float32
    assert env.action_space.shape == (5,)
    assert {"success", "cube_pos", "cube_quat", "cube_yaw"} <= set(info)
    assert env.spec.max_episode_steps == 80
    env.close()


def test_images_show_the_scene_and_differ_between_cameras():
    env = make(image_size=(48, 48))
    obs, _ = env.reset(seed=1)
    assert obs["front"].std() > 10 and obs["wrist"].std() > 10
    assert np.abs(obs["front"].astype(int) - obs["wrist"].astype(int)).mean() > 10
    env.close()


def test_seeded_reset_and_rollout_are_deterministic():
    a, b = make(), make()
    trace_a, trace_b = run_expert(a, seed=7, noise=0.2), run_expert(b, seed=7, noise=0.2)
    assert len(trace_a) == len(trace_b)
    for (obs_a, r_a, info_a), (obs_b, r_b, info_b) in zip(trace_a, trace_b, strict=True):
        for key in obs_a:
            np.testing.assert_array_equal(obs_a[key], obs_b[key])
        np.testing.assert_array_equal(info_a["cube_pos"], info_b["cube_pos"])
        assert r_a == r_b
    other = a.reset(seed=8)[1]["cube_pos"]
    assert not np.allclose(other, a.reset(seed=7)[1]["cube_pos"])


def test_cube_spawn_covers_20cm_square_and_all_yaws():
    env = make(cameras=())
    pos, yaw = [], []
    for seed in range(200):
        _, info = env.reset(seed=seed)
        pos.append(info["cube_pos"])
        yaw.append(info["cube_yaw"])
    pos = np.array(pos)
    assert (np.abs(pos[:, :2]) <= 0.1 + 1e-3).all()
    assert np.ptp(pos[:, 0]) > 0.18 and np.ptp(pos[:, 1]) > 0.18
    np.testing.assert_allclose(pos[:, 2], CUBE_HALF, atol=2e-3)  # resting on the table
    assert np.ptp(yaw) > 5.5


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_expert_succeeds_on_100_seeds(noise):
    env = make(cameras=())
    successes = [run_expert(env, seed, noise)[-1][2]["success"] for seed in range(100)]
    assert np.mean(successes) >= 0.95


def test_success_requires_lift_and_grasp():
    env = make(cameras=(), terminate_on_success=False)
    raw: CubePickEnv = env.unwrapped
    env.reset(seed=0)
    # Cube carried 6 cm up with nobody holding it: not a success (it is falling, not held).
    raw.place_object("cube", raw.object_pose("cube")[0][:2], 0.0, z=CUBE_HALF + 0.06)
    mujoco.mj_forward(raw.model, raw.data)
    assert not raw._success()
    # A real grasp and lift: success, and the cube is still held after more lifting steps.
    trace = run_expert(env, seed=0, max_steps=30)
    obs, reward, info = trace[-1]
    assert info["success"] and reward == 1.0
    assert info["cube_pos"][2] > CUBE_HALF + 0.1
    assert raw.fingers_touch("cube")
    # Let go: the cube falls and success ends.
    for _ in range(10):
        obs, reward, *_, info = env.step(np.array([0, 0, 0, 0, -1.0]))
    assert not info["success"] and info["cube_pos"][2] < CUBE_HALF + 0.01


def test_gripper_does_not_attach_the_cube():
    model = make(cameras=()).unwrapped.model
    assert model.neq == 0  # no weld/connect constraint: grasping is contact and friction
    assert model.body("cube").parentid == 0  # the cube is a free body of the world


def test_action_moves_end_effector_and_respects_workspace():
    env = make(cameras=())
    obs, _ = env.reset(seed=0)
    start = obs["state"][:3].copy()
    obs, *_ = env.step(np.array([1.0, 0, 0, 0, -1]))
    assert obs["state"][0] - start[0] == pytest.approx(0.03, abs=4e-3)
    for _ in range(30):
        obs, *_ = env.step(np.array([1.0, 1.0, 1.0, 1.0, -1]))
    np.testing.assert_allclose(obs["state"][:3], [0.25, 0.25, 0.35], atol=3e-3)
    assert obs["state"][3] == pytest.approx(np.pi / 2, abs=0.02)
    for _ in range(5):
        obs, *_ = env.step(np.array([0, 0, 0, 0, 1.0]))
    assert obs["state"][4] < 0.005  # fingers closed on nothing


def test_yaw_control_off_gives_4d_action():
    env = make(cameras=(), yaw_control=False)
    assert env.action_space.shape == (4,)
    obs, info = env.reset(seed=3)
    yaw0 = float(obs["state"][3])
    # The cube needs a real turn to be grasped face-on: a yaw that moved would show.
    assert abs(wrap_grasp_yaw(float(info["cube_yaw"]))) > 0.2
    expert = env.unwrapped.expert(env)
    expert.reset(seed=3)
    states = []
    for _ in range(40):
        action = expert.act(obs, info)
        assert action.shape == (4,)  # x, y, z, gripper: the expert drops its yaw command
        obs, _, terminated, truncated, info = env.step(action)
        states.append(obs["state"].copy())
        assert not (terminated or truncated)
    states = np.array(states)
    # The yaw never moves, whatever the expert wanted ...
    np.testing.assert_allclose(states[:, 3], yaw0, atol=1e-3)
    # ... while x, y, z still follow the actions: the gripper hovers over the cube, open.
    cube = info["cube_pos"]
    assert np.hypot(*(states[-1, :2] - cube[:2])) < 0.015
    assert states[-1, 2] == pytest.approx(cube[2] + expert.hover_m, abs=0.01)
    assert (states[:, 4] > 0.08).all()
    # The last component is the gripper in a 4-D action too: it closes, the yaw still stays.
    for _ in range(5):
        obs, *_ = env.step(np.array([0, 0, 0, 1.0]))
    assert obs["state"][4] < 0.005
    assert obs["state"][3] == pytest.approx(yaw0, abs=1e-3)


def test_shadow_size_zero_renders():
    env = make(shadow_size=0)
    obs, _ = env.reset(seed=0)
    assert obs["front"].std() > 10
    assert env.unwrapped.model.vis.quality.shadowsize == 0


def test_wrap_grasp_yaw():
    assert wrap_grasp_yaw(0.0) == pytest.approx(0.0)
    assert wrap_grasp_yaw(np.pi / 2 + 0.1) == pytest.approx(0.1)
    assert wrap_grasp_yaw(-np.pi + 0.2) == pytest.approx(0.2)
    assert -np.pi / 4 <= wrap_grasp_yaw(np.pi / 4) < np.pi / 4


@pytest.mark.parametrize(
    "action, match",
    [
        (np.zeros(3), "shape"),
        (np.array([0, 0, np.nan, 0, 0]), "NaN"),
        (np.array([0, np.inf, 0, 0, 0]), "NaN or inf"),
    ],
)
def test_bad_actions_raise(action, match):
    env = make(cameras=())
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": (4, 4)}, "image_size"),
        ({"image_size": (32,)}, "image_size"),
        ({"cameras": ("front", "top")}, "cameras must be distinct names"),
        ({"cameras": ("front", "front")}, "cameras must be distinct names"),
        ({"shadow_size": -1}, "shadow_size"),
        ({"control_hz": 0.1}, "control_hz"),
        ({"workspace_low": (0, 0, 0), "workspace_high": (0.1, 0.1, 0)}, "workspace"),
    ],
)
def test_bad_config_values_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        envs.EnvConfig(**kwargs)


def test_unknown_task_and_bad_render_mode():
    with pytest.raises(ValueError, match="unknown task 'cube_pik'.*cube_pick"):
        envs.make("cube_pik")
    with pytest.raises(ValueError, match="render_mode"):
        CubePickEnv(render_mode="human")


def test_render_rgb_array():
    env = make(render_mode="rgb_array", cameras=("front",))
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
