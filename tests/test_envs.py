"""The online protocol and the gymnasium envs: checkers, batching, seeding, hand-made cases."""

from __future__ import annotations

import math
import os

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rulegym.envs
from rulegym.envs import ENVS, OnlineEnv, OnlineVectorEnv, make_task
from rulegym.envs.protocol import Task

HAS_DATA = bool(os.environ.get("RULEGYM_DATA"))
needs_data = pytest.mark.skipif(not HAS_DATA, reason="set RULEGYM_DATA to the datasets folder (CI uses ../shared/data)")

# options that make each id loadable from the shared data and quick to run
SMALL = {
    "rulegym/MNIST-v0": {"lifetime_length": 30},
    "rulegym/FashionMNIST-v0": {"lifetime_length": 30},
    "rulegym/KMNIST-v0": {"split": "test", "lifetime_length": 30},  # only the test split is on disk
    "rulegym/EMNIST-v0": {"split": "test", "lifetime_length": 30},
    "rulegym/Digits-v0": {"lifetime_length": 30},
    "rulegym/Omniglot-v0": {"episodes": 3},
    "rulegym/Random-v0": {"lifetime_length": 30},
    "rulegym/SumSign-v0": {"lifetime_length": 30},
    "rulegym/WizardOfOz-v0": {"lifetime_length": 30},
}


def env_options(env_id: str, request) -> dict:
    """Options for one id; CIFAR-10 is not on disk, so it reads a generated archive."""
    if env_id == "rulegym/CIFAR10-v0":
        root = request.getfixturevalue("cifar_root")
        return {"root": str(root), "lifetime_length": 30}
    if ENVS[env_id].needs_data and not HAS_DATA:
        pytest.skip("set RULEGYM_DATA to the datasets folder (CI uses ../shared/data)")
    return dict(SMALL[env_id])


def random_actions(env, steps: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = env.action_space.shape
    return [rng.normal(0.0, 3.0, size=shape).astype(np.float32) for _ in range(steps)]


@pytest.mark.parametrize("env_id", sorted(ENVS))
def test_every_id_passes_the_checkers(env_id, request):
    opts = env_options(env_id, request)
    env = gym.make(env_id, **opts)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(OnlineEnv(env.unwrapped.task), warn=False)


@pytest.mark.parametrize("env_id", sorted(ENVS))
def test_native_vector_env_equals_sync_vector_env(env_id, request):
    """make_vec gives the native env, and it reproduces N single envs step for step, across resets."""
    opts = env_options(env_id, request)
    n = 3
    native = gym.make_vec(env_id, num_envs=n, **opts)
    assert isinstance(native.unwrapped, OnlineVectorEnv)
    sync = gym.vector.SyncVectorEnv([lambda: gym.make(env_id, **opts) for _ in range(n)])
    obs_a, _ = native.reset(seed=11)
    obs_b, _ = sync.reset(seed=11)
    length = native.unwrapped.task.lifetime_length
    steps = 2 * length + 3  # crosses two autoresets
    assert_same_steps(native, sync, obs_a, obs_b, random_actions(native, steps))


def assert_same_steps(native, sync, obs_a, obs_b, actions) -> None:
    """The two vector envs, from observations obs_a / obs_b, give the same observations, rewards,
    flags and infos (values and dtypes) for every action batch."""
    for t, action in enumerate(actions):
        for key in obs_a:
            np.testing.assert_array_equal(obs_a[key], obs_b[key], err_msg=f"{key} at step {t}")
        obs_a, rew_a, term_a, trunc_a, info_a = native.step(action)
        obs_b, rew_b, term_b, trunc_b, info_b = sync.step(action)
        np.testing.assert_array_equal(rew_a, rew_b)
        np.testing.assert_array_equal(term_a, term_b)
        np.testing.assert_array_equal(trunc_a, trunc_b)
        assert info_a.keys() == info_b.keys()
        for key in info_a:
            np.testing.assert_array_equal(info_a[key], info_b[key], err_msg=f"info {key} at step {t}")
            assert info_a[key].dtype == info_b[key].dtype
        assert term_a.dtype == np.bool_


def test_partial_reset_equals_sync_vector_env():
    """reset_mask restarts only the masked lifetimes: a seed reseeds those rows only, and the
    other rows keep their lifetime and the previous label and error they were last shown."""
    opts = {"lifetime_length": 6}
    n = 3
    native = gym.make_vec("rulegym/Digits-v0", num_envs=n, **opts)
    sync = gym.vector.SyncVectorEnv([lambda: gym.make("rulegym/Digits-v0", **opts) for _ in range(n)])
    native.reset(seed=11)
    sync.reset(seed=11)
    actions = random_actions(native, 14)
    for action in actions[:2]:
        native.step(action)
        sync.step(action)
    mask = np.array([True, False, False])
    obs_a, _ = native.reset(seed=100, options={"reset_mask": mask})
    obs_b, _ = sync.reset(seed=100, options={"reset_mask": mask})
    assert obs_a["y_prev"][1:].any()  # the rows that go on still show their last label
    assert_same_steps(native, sync, obs_a, obs_b, actions[2:])  # across the lifetimes' ends and autoresets
    with pytest.raises(ValueError, match="no True entry"):
        native.reset(options={"reset_mask": np.zeros(n, dtype=bool)})


def lifetime_inputs(env_id: str, opts: dict, seed: int) -> np.ndarray:
    env = gym.make_vec(env_id, num_envs=2, **opts)
    obs, _ = env.reset(seed=seed)
    xs, labels = [obs["x"]], []
    for action in random_actions(env, 10):
        obs, _, _, _, info = env.step(action)
        xs.append(obs["x"])
        labels.append(info["label"])
    return np.stack(xs), np.stack(labels)


@pytest.mark.parametrize(
    "env_id,extra",
    [
        ("rulegym/Digits-v0", {}),
        ("rulegym/Digits-v0", {"random_projection": True}),
        ("rulegym/Digits-v0", {"permute_labels": True, "permute_pixels": True, "num_classes": 4}),
        ("rulegym/Random-v0", {}),
        ("rulegym/SumSign-v0", {}),
        pytest.param("rulegym/Omniglot-v0", {}, marks=needs_data),
        pytest.param("rulegym/WizardOfOz-v0", {}, marks=needs_data),
    ],
)
def test_seed_fixes_the_lifetime_and_a_new_seed_changes_it(env_id, extra, request):
    opts = {**env_options(env_id, request), **extra}
    x1, y1 = lifetime_inputs(env_id, opts, seed=5)
    x2, y2 = lifetime_inputs(env_id, opts, seed=5)
    x3, y3 = lifetime_inputs(env_id, opts, seed=6)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    # the two lifetimes of one batch are different task instances too
    assert not np.array_equal(x1[:, 0], x1[:, 1])


class ScriptedTask(Task):
    """A hand-made stream: inputs 10*t + lifetime, labels [2, 0, 1, 1], mask on steps 1 and 3."""

    n_classes = 3
    x_shape = (1,)
    x_bound = 100.0
    lifetime_length = 4
    LABELS = np.array([2, 0, 1, 1])
    MASK = np.array([False, True, False, True])

    def sample_instance(self, rng):
        return {"offset": np.array([rng.integers(10)])}

    def observe(self, inst, t):
        x = (10.0 * t + inst["offset"][:, 0]).astype(np.float32)[:, None]
        return x, self.LABELS[t].astype(np.int64), self.MASK[t]


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_protocol_on_a_scripted_stream():
    env = OnlineEnv(ScriptedTask())
    obs, info = env.reset(seed=0)
    offset = obs["x"][0]
    assert info == {}
    np.testing.assert_array_equal(obs["y_prev"], np.zeros(3))  # nothing revealed before the first prediction
    np.testing.assert_array_equal(obs["err_prev"], np.zeros(3))
    actions = [np.array([0.0, 1.0, 2.0]), np.array([3.0, -1.0, 0.5]), np.array([0.0, 0.0, 0.0]), np.array([-2.0, 4.0, 1.0])]
    for t, logits in enumerate(actions):
        assert obs["x"][0] == 10.0 * t + offset
        obs, reward, terminated, truncated, info = env.step(logits.astype(np.float32))
        y = ScriptedTask.LABELS[t]
        p = softmax(logits)
        # the label of step t is revealed only now, after the prediction for x_t
        assert info["label"] == y
        np.testing.assert_array_equal(obs["y_prev"], np.eye(3)[y])
        np.testing.assert_allclose(obs["err_prev"], p - np.eye(3)[y], atol=1e-6)
        assert math.isclose(reward, math.log(p[y]), rel_tol=1e-9)
        assert math.isclose(info["loss"], -math.log(p[y]), rel_tol=1e-9)
        assert info["correct"] == (int(np.argmax(logits)) == y)
        assert info["loss_mask"] == ScriptedTask.MASK[t]
        assert terminated == (t == 3) and not truncated
    np.testing.assert_array_equal(obs["x"], np.zeros(1))  # no input after the lifetime
    with pytest.raises(RuntimeError, match="reset"):
        env.step(actions[0])


def test_bad_actions_get_clear_errors():
    env = OnlineEnv(ScriptedTask())
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(3))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.array([0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(5))
    venv = OnlineVectorEnv(ScriptedTask(), num_envs=2)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        venv.step(np.zeros((3, 3)))
    for wrong in (np.zeros((3, 2)), np.zeros(6)):  # transposed or flat: never silently rearranged
        with pytest.raises(ValueError, match="shape"):
            venv.step(wrong)


def test_vector_autoreset_and_truncation():
    venv = OnlineVectorEnv(ScriptedTask(), num_envs=2, max_episode_steps=2)
    venv.reset(seed=1)
    _, _, term, trunc, _ = venv.step(np.zeros((2, 3)))
    assert not term.any() and not trunc.any()
    obs, _, term, trunc, info = venv.step(np.zeros((2, 3)))
    assert trunc.all() and not term.any()
    # next step starts new lifetimes: reward 0, no step info, zeroed previous label/error
    obs, reward, term, trunc, info = venv.step(np.zeros((2, 3)))
    np.testing.assert_array_equal(reward, 0.0)
    assert info == {}
    np.testing.assert_array_equal(obs["y_prev"], 0.0)
    np.testing.assert_array_equal(obs["x"][:, 0] % 10, obs["x"][:, 0])  # t = 0 again
    with pytest.raises(ValueError, match="num_envs"):
        OnlineVectorEnv(ScriptedTask(), num_envs=0)


def test_omniglot_queries_come_from_the_support_classes(request):
    opts = env_options("rulegym/Omniglot-v0", request)
    task = make_task("omniglot", **{**opts, "ways": 5, "shots": 2, "queries": 3, "episodes": 4})
    rng = np.random.default_rng(0)
    for _ in range(20):
        inst = task.sample_instance(rng)
        for e in range(task.episodes):
            sl = slice(e * task.episode_length, (e + 1) * task.episode_length)
            labels, mask, rows = inst["labels"][sl], inst["mask"][sl], inst["order"][sl]
            support, query = labels[~mask], labels[mask]
            assert mask.sum() == 3 and not mask[:10].any()  # the queries come last
            assert sorted(np.unique(support)) == list(range(5)) and np.bincount(support).tolist() == [2] * 5
            assert set(query) <= set(support)
            # relabelling is consistent: every support image of label l is of the same character
            chars = task.bank.labels[rows]
            for lab in range(5):
                assert len(set(chars[labels == lab])) == 1
            assert len(set(rows)) == len(rows)  # no image shown twice in an episode


def test_image_options():
    base = make_task("image", dataset="digits", lifetime_length=50)
    assert base.x_shape == (64,) and base.n_classes == 10
    shaped = make_task("image", dataset="digits", flatten=False, resize=16, lifetime_length=50)
    assert shaped.x_shape == (1, 16, 16)
    sub = make_task("image", dataset="digits", classes=[3, 7], lifetime_length=50)
    inst = sub.sample_instance(np.random.default_rng(0))
    assert sub.n_classes == 2 and set(sub.bank.labels[inst["order"]]) == {3, 7}
    x, y, _ = sub.observe({k: v[None] for k, v in inst.items()}, np.array([0]))
    assert y[0] == {3: 0, 7: 1}[int(sub.bank.labels[inst["order"][0]])]
    # standard normalisation: the split has zero mean and unit variance
    pixels = base.inputs.bank.pixels.astype(np.float64) * base.inputs.scale + base.inputs.shift
    assert abs(pixels.mean()) < 1e-4 and abs(pixels.std() - 1) < 1e-4
    with pytest.raises(ValueError, match="num_classes"):
        make_task("image", dataset="digits", num_classes=11)
    with pytest.raises(ValueError, match="classes"):
        make_task("image", dataset="digits", classes=[3, 3])
    # non-integers are refused by name, not truncated to other classes or failing at reset
    for bad in ([0.5, 1.7], [0, 1, float("nan")], [True, False]):
        with pytest.raises(ValueError, match="classes must list integer"):
            make_task("image", dataset="digits", classes=bad)
    for bad in (2.5, True):
        with pytest.raises(ValueError, match="num_classes"):
            make_task("image", dataset="digits", num_classes=bad)
    assert make_task("image", dataset="digits", classes=np.array([3, 7]), num_classes=np.int64(2)).n_classes == 2
    with pytest.raises(ValueError, match="normalize"):
        make_task("image", dataset="digits", normalize="zscore")
    with pytest.raises(TypeError, match="valid options"):
        make_task("image", dataset="digits", lifetime=3)
    with pytest.raises(ValueError, match="lifetime_length"):
        make_task("random", lifetime_length=0)
    with pytest.raises(ValueError, match="unknown dataset"):
        make_task("image", dataset="svhn")


def test_random_projection_is_glorot_and_per_lifetime():
    task = make_task("image", dataset="digits", random_projection=True, lifetime_length=20)
    rng = np.random.default_rng(0)
    a, b = task.sample_instance(rng)["proj"], task.sample_instance(rng)["proj"]
    limit = math.sqrt(6 / (64 + 64))
    assert a.shape == (64, 64) and np.abs(a).max() <= limit and not np.array_equal(a, b)
    inst = {k: v[None] for k, v in task.sample_instance(np.random.default_rng(1)).items()}
    x, _, _ = task.observe(inst, np.array([0]))
    raw = task.inputs.bank.pixels[inst["order"][0, 0]].astype(np.float32) * task.inputs.scale + task.inputs.shift
    np.testing.assert_allclose(x[0], inst["proj"][0] @ raw, rtol=1e-5, atol=1e-5)
    assert np.abs(x).max() <= task.x_bound


def test_random_task_memorisation_structure():
    task = make_task("random", lifetime_length=60)
    inst = task.sample_instance(np.random.default_rng(3))
    assert inst["images"].shape == (20, 784)
    # every pass shows each of the 20 images once
    for p in range(3):
        assert sorted(inst["order"][20 * p : 20 * (p + 1)]) == list(range(20))
    assert abs(inst["images"].mean()) < 0.05 and abs(inst["images"].std() - 1) < 0.05


def test_sum_sign_labels_and_inputs():
    task = make_task("sum_sign", x_shape=32, lifetime_length=400)
    inst = {k: v[None] for k, v in task.sample_instance(np.random.default_rng(0)).items()}
    xs, ys = zip(*[task.observe(inst, np.array([t]))[:2] for t in range(400)])
    x, y = np.concatenate(xs), np.concatenate(ys)
    np.testing.assert_array_equal(y, (x.sum(axis=1) >= 0).astype(int))
    assert 0.35 < y.mean() < 0.65
    # each row is a truncated normal around its own mean: within +-2 of the row mean's source
    spread = x - x.mean(axis=1, keepdims=True)
    assert np.abs(x).max() <= 3.0 and 0.7 < spread.std() < 0.95  # std of N(0,1) truncated at +-2 is 0.88


@needs_data
def test_char_stream_reveals_the_next_character():
    task = make_task("chars", lifetime_length=50)
    inst = {k: v[None] for k, v in task.sample_instance(np.random.default_rng(0)).items()}
    x0, y0, _ = task.observe(inst, np.array([0]))
    x1, _, _ = task.observe(inst, np.array([1]))
    assert x0.shape == (1, 27) and x0.sum() == 1
    assert np.argmax(x1[0]) == y0[0]  # the label of step t is the input of step t+1
    test = make_task("chars", split="test", lifetime_length=50)
    assert test.codes.shape[0] < task.codes.shape[0] / 5


def test_registered_ids_and_list():
    ids = [spec for spec in gym.registry if spec.startswith("rulegym/")]
    assert set(ids) == set(ENVS)
    assert set(rulegym.envs.EMBEDDED_ENV_IDS) == {"rulegym/Digits-v0", "rulegym/Random-v0", "rulegym/SumSign-v0"}


def test_sum_sign_pads_its_label_space():
    """n_classes gives Sum Sign more outputs (for agents with a fixed output size); labels stay 0/1."""
    env = gym.make_vec("rulegym/SumSign-v0", num_envs=3, x_shape=16, n_classes=10, lifetime_length=40)
    obs, _ = env.reset(seed=0)
    assert env.single_action_space.shape == (10,)
    labels = []
    for _ in range(30):
        obs, *_ = env.step(np.zeros((3, 10), np.float32))
        labels.append(obs["y_prev"].argmax(-1))
    assert set(np.concatenate(labels).tolist()) == {0, 1}
    env.close()
    with pytest.raises(ValueError, match="n_classes"):
        gym.make("rulegym/SumSign-v0", n_classes=1)


def test_options_are_refused_rather_than_reinterpreted():
    # a shape: not a string ("784" was read as (7, 8, 4)), a bool or floats
    for bad in ("784", (8.7,), True, [3.9, 2.2], (), (3, 0)):
        for task in ("random", "sum_sign"):
            with pytest.raises(ValueError, match="x_shape"):
                make_task(task, x_shape=bad)
    assert make_task("random", x_shape=np.int64(5)).x_shape == (5,) and make_task("sum_sign", x_shape=[2, 3]).x_shape == (2, 3)
    # yes/no options: the string "no" meant yes
    for option in ("permute_pixels", "random_projection", "flatten", "permute_labels"):
        with pytest.raises(ValueError, match=f"{option} must be true or false"):
            make_task("image", dataset="digits", **{option: "no"})
    assert make_task("image", dataset="digits", flatten=False).x_shape == (1, 8, 8)
    # counts of the vector env: 2.5 steps cut lifetimes at 3, True meant 1
    for bad in (2.5, True, 0):
        with pytest.raises(ValueError, match="max_episode_steps must be a positive integer"):
            gym.make_vec("rulegym/SumSign-v0", num_envs=2, x_shape=2, max_episode_steps=bad)
        with pytest.raises(ValueError, match="num_envs must be a positive integer"):
            OnlineVectorEnv(make_task("sum_sign", x_shape=2), num_envs=bad)
