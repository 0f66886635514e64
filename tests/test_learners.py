"""Meta-training learners: configs, task mixtures, BPTT, ES, checkpoints, logging, CLI, demos.

The multi-process and kill-and-resume checks live in test_learners_distributed.py.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import rulegym.learners
from rulegym.agents import make_agent
from rulegym.learners import (
    BPTTConfig,
    BPTTLearner,
    ConfigError,
    ESConfig,
    ESLearner,
    TaskMixture,
    TaskShapeError,
    TaskSpec,
    centered_ranks,
    config_from_dict,
    load_config,
    meta_train,
    shard,
)
from rulegym.learners import checkpoint as ck
from rulegym.learners.__main__ import main as cli_main
from rulegym.learners.tasks import lifetime_seeds
from rulegym.train.loop import rollout, run_lifetime

RANDOM = {"env_id": "rulegym/Random-v0", "options": {"x_shape": 6, "n_images": 3, "n_classes": 3, "lifetime_length": 16}}
SMALL = {"agent_options": {"hidden": 8}, "tasks": [RANDOM], "progress": False, "eval_lifetimes": 4}


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def bptt(**kw) -> BPTTConfig:
    return BPTTConfig(**{**SMALL, "batch_size": 4, **kw})


def es(**kw) -> ESConfig:
    return ESConfig(**{**SMALL, "batch_size": 2, "population": 6, **kw})


# ---------------------------------------------------------------------------- configs
def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['lrr'\].*valid keys:.*\blr\b"):
        config_from_dict({"learner": "bptt", "lrr": 0.1})
    with pytest.raises(ConfigError, match="unknown learner 'ppo'; valid learners: bptt, es"):
        config_from_dict({"learner": "ppo"})
    with pytest.raises(ConfigError, match="population must be an even number"):
        ESConfig(population=7)
    with pytest.raises(ConfigError, match="sigma must be a positive finite number"):
        ESConfig(sigma=0.0)
    with pytest.raises(ConfigError, match=r"fitness must be one of \['loss', 'accuracy'\]"):
        ESConfig(fitness="reward")
    with pytest.raises(ConfigError, match="unknown agent 'nope'; registered agents:.*meta_rnn"):
        BPTTConfig(agent="nope")
    with pytest.raises(ConfigError, match="unknown env id 'rulegym/Nope-v0'"):
        BPTTConfig(tasks=["rulegym/Nope-v0"])
    with pytest.raises(ConfigError, match=r"tasks\[0\]: unknown key\(s\) \['option'\]"):
        BPTTConfig(tasks=[{"env_id": "rulegym/Random-v0", "option": {}}])
    with pytest.raises(ConfigError, match="truncation must be a positive integer"):
        BPTTConfig(truncation=0)
    with pytest.raises(ConfigError, match="device must be"):
        BPTTConfig(device="tpu")


def test_config_files_and_overrides(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'learner = "es"\nagent = "meta_rnn"\npopulation = 8\n[agent_options]\nhidden = 4\n'
        '[[tasks]]\nenv_id = "rulegym/Random-v0"\noptions = { x_shape = 6, n_classes = 3 }\n'
    )
    cfg = load_config(toml, ["sigma=0.1", "agent_options.ticks=2", "tasks.0.options.lifetime_length=9", "rank_shaping=false"])
    assert isinstance(cfg, ESConfig) and cfg.population == 8 and cfg.sigma == 0.1 and cfg.rank_shaping is False
    assert cfg.agent_options == {"hidden": 4, "ticks": 2}
    assert cfg.tasks[0] == TaskSpec("rulegym/Random-v0", {"x_shape": 6, "n_classes": 3, "lifetime_length": 9})
    (tmp_path / "run.json").write_text(json.dumps(cfg.to_dict()))
    assert load_config(tmp_path / "run.json") == cfg  # the resolved config round-trips
    for example in sorted((Path(rulegym.learners.__file__).parent / "configs").glob("*.toml")):
        assert load_config(example).iterations > 0, example  # the shipped examples stay valid
    with pytest.raises(ConfigError, match="not an index"):
        load_config(toml, ["tasks.3.weight=2"])
    (tmp_path / "x.yaml").write_text("a: 1")
    with pytest.raises(ConfigError, match="must end in .json or .toml"):
        load_config(tmp_path / "x.yaml")


# ---------------------------------------------------------------------------- tasks
def test_mixture_draws_by_weight_deterministically_and_checks_shapes():
    a = TaskSpec("rulegym/Random-v0", {"x_shape": 6, "n_classes": 2}, weight=1.0)
    b = TaskSpec("rulegym/SumSign-v0", {"x_shape": 6}, weight=3.0)
    mix = TaskMixture([a, b], seed=0)
    draws = [mix.choose(s) for s in range(1000)]
    again, other = TaskMixture([a, b], seed=0), TaskMixture([a, b], seed=1)
    assert draws == [again.choose(s) for s in reversed(range(1000))][::-1]  # a pure function of (seed, step)
    assert 0.70 < np.mean(draws) < 0.80  # P(b) = 3/4
    assert draws != [other.choose(s) for s in range(1000)]
    assert (mix.x_dim, mix.n_classes) == (6, 2)
    with pytest.raises(TaskShapeError, match=r"x_dim=6, n_classes=3.*x_dim=7, n_classes=3.*x_shape"):
        TaskMixture([TaskSpec(**RANDOM), TaskSpec("rulegym/Random-v0", {"x_shape": 7, "n_classes": 3})], seed=0)
    mix.close()


def test_shard_covers_everything_once():
    for n in (1, 5, 10, 17):
        for w in (1, 2, 3):
            parts = [shard(n, r, w) for r in range(w)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(parts[i][1] == parts[i + 1][0] for i in range(w - 1))
            assert max(h - l for l, h in parts) - min(h - l for l, h in parts) <= 1


# ---------------------------------------------------------------------------- BPTT
def _flat_grad(params) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


def test_bptt_gradient_is_the_gradient_of_the_mean_lifetime_loss():
    learner = BPTTLearner(bptt())
    stats, bad = learner.run_batch()
    assert not bad and stats.count == 4 * 16
    got = _flat_grad(learner.params) / stats.count
    # independent: the standard loop on the same lifetimes, full BPTT of mean_loss()
    agent = make_agent("meta_rnn", 6, 3, hidden=8)
    agent.load_state_dict(learner.agent.state_dict())
    env = gym.make_vec(RANDOM["env_id"], num_envs=4, **RANDOM["options"])
    res = run_lifetime(agent, env, seed=learner.seed_base, grad=True)
    res.mean_loss().backward()
    want = torch.cat([p.grad.reshape(-1) for p in agent.parameters()])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert stats.loss_sum / stats.count == pytest.approx(float(res.mean_loss().detach()), rel=1e-6)


def test_truncation_detaches_between_windows():
    full = BPTTLearner(bptt())
    full.run_batch()
    trunc = BPTTLearner(bptt(truncation=5))
    trunc.run_batch()
    # by hand: windows of 5, 5, 5, 1 steps from the same lifetimes, state detached in between
    agent = make_agent("meta_rnn", 6, 3, hidden=8)
    agent.load_state_dict(trunc.agent.state_dict())
    env = gym.make_vec(RANDOM["env_id"], num_envs=4, **RANDOM["options"])
    obs, _ = env.reset(seed=lifetime_seeds(trunc.seed_base, 0, range(4)))
    state = agent.initial_state(4)
    for n in (5, 5, 5, 1):
        res = rollout(agent, env, obs, state, n, grad=True)
        (res.loss * res.loss_mask).sum().backward()
        state, obs = {k: v.detach() for k, v in res.state.items()}, res.obs
    want = torch.cat([p.grad.reshape(-1) for p in agent.parameters()])
    torch.testing.assert_close(_flat_grad(trunc.params), want, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(_flat_grad(trunc.params), _flat_grad(full.params), atol=1e-4)


def test_activation_checkpointing_same_gradient_less_memory():
    def run(**kw):
        learner = BPTTLearner(bptt(**kw))
        saved = [0]

        def pack(t):
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            stats, _ = learner.run_batch()
        return _flat_grad(learner.params), stats, saved[0]

    g_plain, s_plain, mem_plain = run()
    g_ckpt, s_ckpt, mem_ckpt = run(activation_checkpoint_steps=4)
    torch.testing.assert_close(g_ckpt, g_plain, atol=1e-6, rtol=1e-6)
    assert (s_ckpt.loss_sum, s_ckpt.correct, s_ckpt.count) == (s_plain.loss_sum, s_plain.correct, s_plain.count)
    # the graph outside the recomputed segments holds (almost) nothing
    assert mem_ckpt < 0.05 * mem_plain
    g_tc, _, _ = run(truncation=6, activation_checkpoint_steps=4)
    g_t, _, _ = run(truncation=6)
    torch.testing.assert_close(g_tc, g_t, atol=1e-6, rtol=1e-6)


def test_bptt_skips_nonfinite_gradient_and_logits():
    learner = BPTTLearner(bptt(lr=0.05))
    before = {k: v.clone() for k, v in learner.agent.state_dict().items()}
    hook = learner.params[0].register_hook(lambda g: g * math.nan)
    with pytest.warns(RuntimeWarning, match="update skipped"):
        m = learner.train_step()
    hook.remove()
    assert m["update_skipped"] == 1 and m["skipped_updates"] == 1 and not math.isfinite(m["grad_norm"])
    assert all(torch.equal(before[k], v) for k, v in learner.agent.state_dict().items())
    assert learner.optimizer.state == {} or all(len(s) == 0 for s in learner.optimizer.state.values())
    m = learner.train_step()
    assert m["update_skipped"] == 0 and m["skipped_updates"] == 1 and learner.step == 2
    assert not torch.equal(before["readout.bias"], learner.agent.readout.bias)
    # non-finite logits: the env would refuse them; the learner skips instead of crashing
    with torch.no_grad():
        learner.agent.readout.bias.fill_(math.nan)
    with pytest.warns(RuntimeWarning, match="non-finite logits"):
        m = learner.train_step()
    assert m["update_skipped"] == 1 and learner.skipped_updates == 2


# ---------------------------------------------------------------------------- ES
def test_centered_ranks():
    r = centered_ranks(np.array([3.0, -1.0, 10.0, 0.5]))
    np.testing.assert_allclose(r, [1 / 6, -0.5, 0.5, -1 / 6])
    assert centered_ranks(np.array([2.0, 2.0])).tolist() == [0.0, 0.0]  # ties share their mean rank
    tied = centered_ranks(np.array([0.5, 0.5, 0.25, 0.75, 0.5, 0.5]))  # two pairs of equal fitness
    assert tied[0] == tied[1] == tied[4] == tied[5] and tied[2] == -0.5 and tied[3] == 0.5


def test_es_member_fitness_equals_the_standard_loop():
    learner = ESLearner(es())
    theta = learner.flat_params()
    seed = 12345
    stats = learner.evaluate_members(np.arange(6), task=0, iteration_seed=seed, theta=theta)
    for member in (0, 1, 4):
        sign = 1.0 if member % 2 == 0 else -1.0
        vec = theta + learner.config.sigma * sign * learner.noise(seed, member // 2)
        agent = make_agent("meta_rnn", 6, 3, hidden=8)
        torch.nn.utils.vector_to_parameters(vec, agent.parameters())
        env = gym.make_vec(RANDOM["env_id"], num_envs=2, **RANDOM["options"])
        res = run_lifetime(agent, env, seed=learner.seed_base + (member // 2) * 2)
        assert stats[member, 2] == 2 * 16
        assert stats[member, 0] / stats[member, 2] == pytest.approx(float(res.mean_loss()), rel=1e-5)
        assert stats[member, 1] / stats[member, 2] == pytest.approx(res.accuracy())


def test_es_antithetic_pairs_share_data_and_state():
    learner = ESLearner(es(sigma=1e-6))  # members of a pair differ only by a negligible perturbation
    stats = learner.evaluate_members(np.arange(6), task=0, iteration_seed=7, theta=learner.flat_params())
    loss = stats[:, 0] / stats[:, 2]
    np.testing.assert_allclose(loss[0::2], loss[1::2], rtol=1e-4)
    assert len(set(np.round(loss[0::2], 3))) == 3  # different pairs: different lifetimes
    common = ESLearner(es(sigma=1e-6, common_data=True))
    stats = common.evaluate_members(np.arange(6), task=0, iteration_seed=7, theta=common.flat_params())
    np.testing.assert_allclose(stats[:, 0], stats[0, 0], rtol=1e-4)


def test_es_gradient_and_chunking():
    learner = ESLearner(es(rank_shaping=False, members_per_chunk=4))
    theta = learner.flat_params()
    learner.train_step()
    f = learner.last_fitness
    seed = torch.Generator().manual_seed(0)  # the learner's generator: the first drawn seed
    it_seed = int(torch.randint(0, 2**62, (1,), generator=seed).item())
    want = sum((f[2 * k] - f[2 * k + 1]) * learner.noise(it_seed, k) for k in range(3)) / (6 * learner.config.sigma)
    torch.testing.assert_close(learner.last_gradient, want, atol=1e-6, rtol=1e-5)
    assert not torch.equal(theta, learner.flat_params())
    # members_per_chunk changes how members are batched, not what they compute
    other = ESLearner(es(rank_shaping=False, members_per_chunk=None))
    other.train_step()
    np.testing.assert_allclose(other.last_fitness, f, rtol=1e-6)
    acc = ESLearner(es(fitness="accuracy"))
    m = acc.train_step()
    assert ((acc.last_fitness >= 0) & (acc.last_fitness <= 1)).all() and m["fitness_mean"] == pytest.approx(m["meta_train_accuracy"])


def test_es_learned_initial_state_uses_each_members_parameters():
    learner = ESLearner(es(agent_options={"hidden": 8, "learn_init": True}))
    assert learner.init_depends_on_params
    m = learner.train_step()
    assert math.isfinite(m["meta_loss"]) and m["update_skipped"] == 0


def test_es_nonfinite_members(monkeypatch):
    import rulegym.learners.es as es_mod

    real = es_mod.population_rollout

    def broken(which):
        def run(*args, **kw):
            out = real(*args, **kw)
            out["nonfinite"] = which(len(out["nonfinite"]))
            return out

        return run

    learner = ESLearner(es())
    monkeypatch.setattr(es_mod, "population_rollout", broken(lambda n: np.arange(n) == 0))
    m = learner.train_step()
    assert m["nonfinite_members"] == 1 and m["update_skipped"] == 0
    assert learner.last_fitness[0] == learner.last_fitness.min()  # the broken member ranks worst
    before = learner.flat_params()
    monkeypatch.setattr(es_mod, "population_rollout", broken(lambda n: np.ones(n, bool)))
    with pytest.warns(RuntimeWarning, match="update skipped"):
        m = learner.train_step()
    assert m["update_skipped"] == 1 and torch.equal(before, learner.flat_params())
    skip = ESLearner(es(nonfinite_fitness="skip"))
    monkeypatch.setattr(es_mod, "population_rollout", broken(lambda n: np.arange(n) == 0))
    with pytest.warns(RuntimeWarning, match="update skipped"):
        assert skip.train_step()["update_skipped"] == 1


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoint_rng_roundtrip_weights_only(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    ck.save_checkpoint(tmp_path / "c.pt", {"step": 1, "x": torch.arange(3), "logs": [{"a": 1.0}]})
    want = (torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1))
    torch.rand(10), np.random.rand(10), random.random()
    payload = ck.load_checkpoint(tmp_path / "c.pt")  # weights_only=True inside
    ck.restore_rng(payload["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1))
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2:] == got[2:]
    assert payload["logs"] == [{"a": 1.0}] and not list(tmp_path.glob(".*tmp*"))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="could not be read"):
        ck.load_checkpoint(tmp_path / "bad.pt")


def test_resume_in_process_equals_straight_run(tmp_path):
    cfg = es(iterations=4, checkpoint_every=2, agent_options={"hidden": 4})
    straight, _ = meta_train(cfg, tmp_path / "a")
    meta_train(cfg.replace(iterations=2), tmp_path / "b")
    with pytest.raises(FileExistsError, match="--resume"):
        meta_train(cfg, tmp_path / "b")
    with pytest.raises(ConfigError, match=r"sigma: 0.05 -> 0.1"):
        meta_train(cfg.replace(sigma=0.1), tmp_path / "b", resume=True)
    resumed, logs = meta_train(cfg, tmp_path / "b", resume=True)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert [r["step"] for r in logs] == [1, 2, 3, 4]


def test_a_gpu_run_resumes_on_a_cpu_and_a_missing_gpu_is_a_clear_error(tmp_path):
    cfg = es(iterations=2, checkpoint_every=1, agent_options={"hidden": 4})
    meta_train(cfg.replace(iterations=1), tmp_path / "run")
    # the checkpoint a CUDA run writes differs from a CPU one only in the device its config names
    payload = ck.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    payload["config"]["device"] = "cuda"
    ck.save_checkpoint(tmp_path / "run" / "checkpoint.pt", payload)
    _, logs = meta_train(cfg, tmp_path / "run", resume=True)  # continued on this CPU
    assert [r["step"] for r in logs] == [1, 2]
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device.*device='cpu'"):
            meta_train(cfg.replace(device="cuda"), tmp_path / "gpu")
        assert not (tmp_path / "gpu").exists()  # nothing written before the error


def test_init_starts_from_a_run_folder_or_a_shipped_rule(tmp_path):
    cfg = bptt(iterations=2, tensorboard=False, checkpoint_every=1)
    first, _ = meta_train(cfg, tmp_path / "a")
    # from a finished run folder: the learner holds exactly that run's meta-parameters
    learner = BPTTLearner(cfg.replace(init=str(tmp_path / "a"), seed=1))
    assert all(torch.equal(first[k], v) for k, v in learner.agent.state_dict().items())
    # the checkpoint is the newest state (a resumed run's meta_params.pt is the last session's)
    torch.save({k: torch.zeros_like(v) for k, v in first.items()}, tmp_path / "a" / "meta_params.pt")
    learner = BPTTLearner(cfg.replace(init=str(tmp_path / "a")))
    assert all(torch.equal(first[k], v) for k, v in learner.agent.state_dict().items())
    # a folder with meta_params.pt alone
    torch.save(first, tmp_path / "a" / "meta_params.pt")
    (tmp_path / "a" / "checkpoint.pt").rename(tmp_path / "a" / "checkpoint.bak")
    learner = BPTTLearner(cfg.replace(init=str(tmp_path / "a")))
    assert all(torch.equal(first[k], v) for k, v in learner.agent.state_dict().items())
    (tmp_path / "a" / "checkpoint.bak").rename(tmp_path / "a" / "checkpoint.pt")
    # fine-tuning moves on from there, and a fresh start differs
    tuned, _ = meta_train(cfg.replace(init=str(tmp_path / "a"), iterations=1), tmp_path / "b")
    fresh = BPTTLearner(cfg).agent.state_dict()
    assert not all(torch.equal(first[k], tuned[k]) for k in first)
    assert not all(torch.equal(first[k], fresh[k]) for k in first)
    # a shipped rule, by name, with its own agent and options
    from rulegym.agents.pretrained import PRETRAINED

    info = PRETRAINED["vsml_mnist"]
    shipped = torch.load(info.path, weights_only=True)
    learner = BPTTLearner(bptt(agent=info.agent, agent_options=info.options, init="vsml_mnist"))
    assert all(torch.equal(shipped[k], v) for k, v in learner.agent.state_dict().items())
    # a source of another agent or other options is refused; so is a missing one
    with pytest.raises(ValueError, match="init 'vsml_mnist' is a vsml with options .*set agent and agent_options"):
        BPTTLearner(bptt(agent="vsml", agent_options={**info.options, "forget_bias": 1.0}, init="vsml_mnist"))
    with pytest.raises(ValueError, match="is a meta_rnn with options"):
        BPTTLearner(cfg.replace(agent_options={"hidden": 5}, init=str(tmp_path / "a")))
    with pytest.raises(FileNotFoundError, match="neither a shipped rule"):
        BPTTLearner(cfg.replace(init=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="init must be"):
        bptt(init="")


def test_a_run_started_from_init_resumes_without_its_source(tmp_path):
    import shutil

    base = bptt(iterations=2, tensorboard=False, checkpoint_every=2)
    meta_train(base, tmp_path / "pre")
    cfg = base.replace(init=str(tmp_path / "pre"), iterations=4)
    straight, _ = meta_train(cfg, tmp_path / "straight")
    meta_train(cfg.replace(iterations=2), tmp_path / "run")
    shutil.move(tmp_path / "pre", tmp_path / "moved")  # the source is gone: the checkpoint holds all
    resumed, _ = meta_train(cfg, tmp_path / "run", resume=True)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    # its new place may be named too (init is read only when a run starts)
    meta_train(cfg.replace(init=str(tmp_path / "moved"), iterations=5), tmp_path / "run", resume=True)


def test_init_options_match_as_json_reads_them(tmp_path):
    """A source's options come back from its config.json with lists; the API may give tuples."""
    vsml = {"agent": "vsml", "agent_options": {"hidden": (3,), "state_size": 4, "msg_size": 2}}
    cfg = bptt(**vsml, iterations=1, tensorboard=False)
    meta_train(cfg, tmp_path / "pre")
    BPTTLearner(bptt(**vsml, init=str(tmp_path / "pre")))


# ---------------------------------------------------------------------------- run folder, logging, CLI
def test_run_folder_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = es(iterations=3, eval_every=2, eval_tasks=[RANDOM, {**RANDOM, "options": {**RANDOM["options"], "lifetime_length": 8}}])
    params, logs = meta_train(cfg, tmp_path)
    assert {"config.json", "checkpoint.pt", "meta_params.pt", "metrics.jsonl", "summary.json", "tensorboard"} <= {p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "config.json").read_text()) == cfg.to_dict()
    assert all(torch.equal(v, torch.load(tmp_path / "meta_params.pt", weights_only=True)[k]) for k, v in params.items())
    assert [("meta_test/Random#0/accuracy" in r) for r in logs] == [False, True, True]
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"meta/loss", "meta/train_accuracy", "meta/grad_norm", "meta/skipped_updates", "es/fitness_std",
            "es/fitness_spread", "speed/lifetimes_per_s", "meta_test/Random#1/accuracy"} <= tags
    assert [e.step for e in acc.Scalars("meta/loss")] == [1, 2, 3]
    assert "config/text_summary" in acc.Tags()["tensors"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["peak_rss_mb"] > 0 and summary["lifetimes_per_s"] > 0


def test_a_run_started_again_from_iteration_0_logs_each_step_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = bptt(iterations=3, checkpoint_every=0)
    meta_train(cfg, tmp_path)
    for name in ("checkpoint.pt", "meta_params.pt"):  # as if killed before its first checkpoint
        (tmp_path / name).unlink()
    meta_train(cfg, tmp_path, resume=True)  # no checkpoint: from iteration 0, in the same folder
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("meta/loss")] == [1, 2, 3]


def test_a_damaged_checkpoint_is_one_line_naming_the_fix(tmp_path, capsys):
    from rulegym.learners.__main__ import main as learners_main

    cfg = bptt(iterations=2, checkpoint_every=1, tensorboard=False)
    meta_train(cfg, tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes((tmp_path / "checkpoint.pt").read_bytes()[:1000])
    assert learners_main(["--run-dir", str(tmp_path), "--resume", "--set", "iterations=3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "could not be read" in err and "move it away" in err and "Traceback" not in err


def test_eval_tasks_of_other_sizes(tmp_path):
    """Size-independent meta-parameters (VSML) are meta-tested on larger inputs; others get a clear error."""
    bigger = {"env_id": "rulegym/Random-v0", "options": {"x_shape": 10, "n_images": 3, "n_classes": 4, "lifetime_length": 6}}
    small = {**RANDOM, "options": {**RANDOM["options"], "lifetime_length": 6}}
    cfg = bptt(agent="vsml", agent_options={"state_size": 4, "msg_size": 2, "ticks": 1}, tasks=[small], eval_tasks=[small, bigger],
               iterations=1, batch_size=2, eval_lifetimes=2, tensorboard=False)
    _, logs = meta_train(cfg, tmp_path / "vsml")
    assert 0.0 <= logs[-1]["meta_test/Random#1/accuracy"] <= 1.0
    with pytest.raises(ValueError, match="x_dim=10, n_classes=4.*meta-parameters whose shapes depend"):
        BPTTLearner(bptt(eval_tasks=[bigger]))


def test_cli(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        'learner = "bptt"\nbatch_size = 2\niterations = 2\neval_lifetimes = 2\n[agent_options]\nhidden = 4\n'
        '[[tasks]]\nenv_id = "rulegym/Random-v0"\noptions = { x_shape = 6, n_classes = 3, lifetime_length = 6 }\n'
    )
    assert cli_main(["--config", str(cfg), "--run-dir", str(tmp_path / "r"), "--set", "lr=0.01", "--no-progress"]) == 0
    assert '"step": 2' in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "config.json").read_text())["lr"] == 0.01
    # resume with the folder's own config, more iterations
    assert cli_main(["--run-dir", str(tmp_path / "r"), "--resume", "--set", "iterations=3", "--no-progress"]) == 0
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 3
    assert cli_main(["--config", str(cfg), "--run-dir", str(tmp_path / "s"), "--set", "bogus=1"]) == 2
    assert "unknown config key(s) ['bogus']" in capsys.readouterr().err


# ---------------------------------------------------------------------------- demonstrations
def test_demo_bptt_meta_rnn_beats_chance_on_held_out_lifetimes(tmp_path):
    """Meta RNN (32 units) meta-trained by BPTT on Random memorisation, 4 classes: chance 25%."""
    task = {"env_id": "rulegym/Random-v0", "options": {"x_shape": 8, "n_images": 4, "n_classes": 4, "lifetime_length": 40}}
    cfg = BPTTConfig(
        agent="meta_rnn", agent_options={"hidden": 32}, tasks=[task], iterations=100, batch_size=16, lr=0.01,
        eval_every=100, eval_lifetimes=64, checkpoint_every=0, tensorboard=False, progress=False,
    )
    _, logs = meta_train(cfg, tmp_path)
    held_out = logs[-1]["meta_test/Random/accuracy"]  # 64 held-out lifetimes x 40 online predictions
    assert held_out > 0.38, held_out
    assert np.mean([r["meta_loss"] for r in logs[-10:]]) < np.mean([r["meta_loss"] for r in logs[:10]]) - 0.1


def test_demo_es_improves_fitness(tmp_path):
    """OpenAI-ES with the defaults (sigma 0.05, Adam lr 0.025, rank shaping) on a tiny Meta RNN."""
    task = {"env_id": "rulegym/SumSign-v0", "options": {"x_shape": 8, "lifetime_length": 20}}
    cfg = ESConfig(
        agent="meta_rnn", agent_options={"hidden": 8}, tasks=[task], iterations=30, population=32, batch_size=8,
        eval_every=0, eval_lifetimes=64, checkpoint_every=0, tensorboard=False, progress=False,
    )
    _, logs = meta_train(cfg, tmp_path)
    first = np.mean([r["fitness_mean"] for r in logs[:5]])
    last = np.mean([r["fitness_mean"] for r in logs[-5:]])
    assert last > first + 0.1, (first, last)
    assert logs[-1]["meta_test/SumSign/accuracy"] > 0.7
