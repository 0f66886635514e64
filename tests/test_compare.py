"""The main job: `rulegym compare` and `rulegym report` end to end on the embedded tasks."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from rulegym.train import compare as compare_mod
from rulegym.train.cli import main
from rulegym.train.compare import CompareConfig, CompareConfigError, load_compare_config

SMALL = ["--seeds", "0", "1", "--lifetimes", "3", "--steps", "40", "--no-progress", "--set", "num_threads=1"]
LEAN = ["--set", "plots=false", "--set", "tensorboard=false"]  # where the test reads neither


def test_compare_end_to_end(tmp_path, no_data, capsys):
    out = tmp_path / "run"
    assert main(["compare", "--agents", "sgd", "adam", "--out", str(out), "--set", "ks=[5,20]", *SMALL]) == 0
    for name in ("config.json", "run.json", "summary.md", "summary.csv", "curves.png", "curves.svg"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))
    run = json.loads((out / "run.json").read_text())
    assert run["seeds"] == [0, 1] and "torch" in run["versions"]
    # every number of the table is recomputed here from the per-step results
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert len(rows) == 2 * 3  # agents x embedded envs
    for row in rows:
        per_seed = []
        for seed in (0, 1):
            with np.load(out / "cells" / f"{row['agent']}__{row['env']}__s{seed}.npz") as z:
                correct, mask = z["correct"], z["loss_mask"]
                assert correct.shape == (40, 3)
                per_seed.append(((correct & mask)[:20].sum() / mask[:20].sum(), (correct & mask)[4].sum() / mask[4].sum()))
        assert float(row["acc_first_20"]) == pytest.approx(np.mean([p[0] for p in per_seed]), abs=1e-12)
        assert float(row["acc_at_5"]) == pytest.approx(np.mean([p[1] for p in per_seed]), abs=1e-12)
    with Image.open(out / "curves.png") as img:
        img.load()
        assert img.size[0] > 300 and img.size[1] > 150
    assert "| sgd |" in capsys.readouterr().out


def test_resumed_compare_does_not_redo_finished_cells(tmp_path, no_data, monkeypatch):
    out = tmp_path / "run"
    args = ["compare", "--agents", "sgd", "--envs", "rulegym/SumSign-v0", "--out", str(out), *LEAN, *SMALL]
    assert main(args) == 0
    first = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    (out / "cells" / "sgd__SumSign__s1.npz").unlink()  # as if the run had been killed before this cell
    calls = []
    real = compare_mod.run_compare.__globals__["res"].save_cell

    def counting(*a, **k):
        calls.append(a[1:4])
        return real(*a, **k)

    monkeypatch.setattr(compare_mod.res, "save_cell", counting)
    assert main(args) == 0
    assert calls == [("sgd", "SumSign", 1)]
    assert (out / "cells" / "sgd__SumSign__s0.npz").stat().st_mtime_ns == first["sgd__SumSign__s0.npz"]
    # a different config in the same folder is refused instead of mixing results
    assert main([*args[:-len(SMALL)], "--seeds", "0", "--lifetimes", "3", "--steps", "41", "--no-progress"]) == 2


def test_report_merges_two_runs(tmp_path, no_data):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["compare", "--agents", "sgd", "--envs", "rulegym/SumSign-v0", "--out", str(a), *LEAN, *SMALL]) == 0
    assert main(["compare", "--agents", "adam", "--envs", "rulegym/SumSign-v0", "rulegym/Random-v0", "--out", str(b), *LEAN, *SMALL]) == 0
    rep = tmp_path / "report"
    assert main(["report", str(a), str(b), "--out", str(rep), "--ks", "5", "20"]) == 0
    rows = list(csv.DictReader(open(rep / "summary.csv")))
    assert {(r["agent"], r["env"]) for r in rows} == {("sgd", "SumSign"), ("adam", "SumSign"), ("adam", "Random")}
    for name in ("summary.md", "curves.png", "heatmap.png", "heatmap.svg"):
        assert (rep / name).is_file()
    # the same agent in two runs stays apart, labelled by run
    c = tmp_path / "c"
    assert main(["compare", "--agents", "sgd", "--envs", "rulegym/SumSign-v0", "--out", str(c), *LEAN, *SMALL]) == 0
    assert main(["report", str(a), str(c), "--out", str(tmp_path / "rep2")]) == 0
    agents = {r["agent"] for r in csv.DictReader(open(tmp_path / "rep2" / "summary.csv"))}
    assert agents == {"a/sgd", "c/sgd"}
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "rep3")]) == 2


def test_config_validation_names_the_problem(tmp_path):
    with pytest.raises(CompareConfigError, match="valid keys"):
        CompareConfig.from_dict({"agent": ["sgd"]})
    with pytest.raises(CompareConfigError, match="registered agents"):
        CompareConfig(agents=["sgdd"])
    with pytest.raises(CompareConfigError, match="registered"):
        CompareConfig(envs=["rulegym/Nope-v0"])
    with pytest.raises(CompareConfigError, match="lifetimes"):
        CompareConfig(lifetimes=0)
    with pytest.raises(CompareConfigError, match="unique"):
        CompareConfig(agents=["sgd", "sgd"])
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('agents = ["sgd", {name = "sgd", label = "sgd-fast", options = {lr = 0.5}}]\nsteps = 30\n')
    cfg = load_compare_config(cfg_file, ["seeds=[3]", "envs=[\"rulegym/SumSign-v0\"]"])
    assert [a.label for a in cfg.agents] == ["sgd", "sgd-fast"] and cfg.seeds == [3] and cfg.steps == 30
    with pytest.raises(CompareConfigError, match="not valid TOML"):
        bad = tmp_path / "bad.toml"
        bad.write_text("agents = [")
        load_compare_config(bad)
    assert main(["compare", "--set", "lifetimes=-1"]) == 2


def test_eval_runs_saved_meta_parameters(tmp_path, no_data, capsys):
    import torch

    from rulegym.agents import make_agent

    path = tmp_path / "sgd.pt"
    torch.save(make_agent("sgd", 16, 2, lr=0.05).state_dict(), path)
    out = tmp_path / "eval"
    env = '--set=envs=[{"env_id": "rulegym/SumSign-v0", "options": {"x_shape": 16}}]'
    args = ["eval", "--params", f"sgd={path}", env]
    assert main([*args, "--out", str(out), *LEAN, *SMALL]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["agents"][0]["params"] == str(path) and len(list((out / "cells").glob("*.npz"))) == 2
    # parameters that do not fit the agent are refused with the reason
    bad = tmp_path / "rnn.pt"
    torch.save(make_agent("meta_rnn", 16, 2, hidden=4).state_dict(), bad)
    assert main(["eval", "--params", f"meta_rnn={bad}", env, "--out", str(tmp_path / "e2"), *LEAN, *SMALL]) == 2
    assert "do not fit" in capsys.readouterr().err
    # parameters in a meta-training run folder come with the agent options of its config.json
    run = tmp_path / "run"
    run.mkdir()
    torch.save(make_agent("meta_rnn", 16, 2, hidden=4).state_dict(), run / "meta_params.pt")
    (run / "config.json").write_text(json.dumps({"agent": "meta_rnn", "agent_options": {"hidden": 4}}))
    assert main(["eval", "--params", f"meta_rnn={run / 'meta_params.pt'}", env, "--out", str(tmp_path / "e3"), *LEAN, *SMALL]) == 0
    assert json.loads((tmp_path / "e3" / "config.json").read_text())["agents"][0]["options"] == {"hidden": 4}
    assert main(["eval", "--params", f"vsml={run / 'meta_params.pt'}", env, "--out", str(tmp_path / "e4"), *LEAN, *SMALL]) == 2
    assert "holds a 'meta_rnn'" in capsys.readouterr().err


def test_every_preset_is_valid_and_gives_its_envs_only_options_they_take():
    from pathlib import Path

    from rulegym.envs.registration import task_options

    presets = sorted((Path(compare_mod.__file__).parent / "presets").glob("*.toml"))
    assert len(presets) >= 8
    for preset in presets:
        cfg = load_compare_config(preset)
        for env in cfg.envs:
            unknown = set(cfg.env_options(env)) - set(task_options(env.env_id))
            assert not unknown, (preset.name, env.env_id, unknown)


def test_compare_runs_omniglot_episodes(tmp_path):
    """Omniglot lifetimes are their episodes (no lifetime_length); `steps` truncates them."""
    import os

    if not os.environ.get("RULEGYM_DATA"):
        pytest.skip("needs RULEGYM_DATA (Omniglot)")
    env = {"env_id": "rulegym/Omniglot-v0", "options": {"split": "test", "ways": 3, "shots": 1, "episodes": 2}}
    cfg = CompareConfig(agents=["sgd"], envs=[env], seeds=[0], lifetimes=2, steps=5, ks=[5], plots=False, tensorboard=False)
    assert "lifetime_length" not in cfg.env_options(cfg.envs[0])
    rows = compare_mod.run_compare(cfg, tmp_path / "run", progress=False)
    with np.load(tmp_path / "run" / "cells" / "sgd__Omniglot__s0.npz") as z:
        assert z["correct"].shape == (5, 2)
    assert rows[0]["lifetimes"] == 2


def test_seeds_run_disjoint_lifetimes(tmp_path, no_data, monkeypatch, capsys):
    """Each seed's lifetimes are its own (not seed + i, which would make seeds 0 and 1 share all
    but one lifetime), every agent of a seed sees the same ones, and none is a meta-training or
    learner meta-test lifetime."""
    import gymnasium as gym

    from rulegym.learners.config import MAX_SEED
    from rulegym.learners.tasks import compare_seed_base, eval_seed_base, train_seed_base
    from rulegym.train import loop

    calls, real = [], loop.evaluate

    def spy(agent, env_id, num_envs, seed, **kw):
        calls.append((seed, num_envs))
        return real(agent, env_id, num_envs=num_envs, seed=seed, **kw)

    monkeypatch.setattr(loop, "evaluate", spy)
    out = tmp_path / "run"
    assert main(["compare", "--agents", "sgd", "adam", "--envs", "rulegym/SumSign-v0", "--out", str(out), *LEAN, *SMALL]) == 0
    assert sorted(calls) == [(compare_seed_base(0), 3)] * 2 + [(compare_seed_base(1), 3)] * 2
    starts = [compare_seed_base(s) for s in (0, 1)]
    assert starts[1] - starts[0] >= 3 and all(b - a >= 2**40 for a, b in [(train_seed_base(MAX_SEED - 1), starts[0]), (starts[1], eval_seed_base(0))])
    # the streams themselves: lifetime 1 of seed 0 is not lifetime 0 of seed 1
    first = []
    for start in starts:
        env = gym.make_vec("rulegym/SumSign-v0", num_envs=3)
        first.append(env.reset(seed=start)[0]["x"])
        env.close()
    assert not np.array_equal(first[0][1], first[1][0]) and not np.array_equal(first[0], first[1])
    # a folder whose cells were seeded otherwise (no record of how) is not resumed into
    stale = json.loads((out / "config.json").read_text())
    assert stale.pop("lifetime_seeds").startswith("lifetime i of seed s")
    (out / "config.json").write_text(json.dumps(stale))
    assert main(["compare", "--agents", "sgd", "adam", "--envs", "rulegym/SumSign-v0", "--out", str(out), *LEAN, *SMALL]) == 2
    assert "lifetime_seeds" in capsys.readouterr().err
    assert main(["compare", "--seeds", str(MAX_SEED), "--out", str(tmp_path / "big"), *LEAN]) == 2


def _write_run(folder, agent="sgd", env="SumSign", seeds=(0, 1), steps=20, lifetimes=3):
    """A run folder of synthetic cells (what `rulegym compare` writes, without running agents)."""
    from rulegym.train import results as res

    rng = np.random.default_rng(len(str(folder)) + steps)
    for seed in seeds:
        res.save_cell(folder, agent, env, seed, correct=rng.random((steps, lifetimes)) < 0.5,
                      loss_mask=np.ones((steps, lifetimes), bool), loss=rng.random((steps, lifetimes)))
    return folder


def test_report_reads_cell_files_only_and_names_a_broken_one(tmp_path, capsys):
    from rulegym.train.results import load_runs

    run = _write_run(tmp_path / "run")
    cells = run / "cells"
    # what an interrupted write leaves: the hidden temporary file of a cell, here of seed 1
    (cells / ".sgd__SumSign__s1.4242.tmp.npz").write_bytes((cells / "sgd__SumSign__s1.npz").read_bytes())
    assert sorted(c.seed for c in load_runs([run])) == [0, 1]
    data = (cells / "sgd__SumSign__s1.npz").read_bytes()
    (cells / "sgd__SumSign__s1.npz").write_bytes(data[: len(data) // 2])  # cut short
    with pytest.raises(ValueError, match=r"sgd__SumSign__s1\.npz is unreadable.*delete it"):
        load_runs([run])
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 2
    assert "sgd__SumSign__s1.npz" in capsys.readouterr().err
    # a label with a leading dot still gets a visible cell file, which is read back
    other = _write_run(tmp_path / "other", agent=".hidden", seeds=[0])
    assert [(c.agent, c.seed) for c in load_runs([other])] == [(".hidden", 0)]


def test_report_tells_run_folders_apart_by_their_path(tmp_path, capsys, monkeypatch):
    run = _write_run(tmp_path / "r1")
    monkeypatch.chdir(tmp_path)
    # the same folder given twice (however spelled) counts once: two seeds, not four
    assert main(["report", "r1", "./r1/", str(run), "--out", str(tmp_path / "rep")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "rep" / "summary.csv")))
    assert [(r["agent"], r["seeds"]) for r in rows] == [("sgd", "2")]
    # two folders of the same name holding the same cells are refused, never merged as seeds
    _write_run(tmp_path / "x" / "run")
    _write_run(tmp_path / "y" / "run")
    assert main(["report", "x/run", "y/run", "--out", str(tmp_path / "rep2")]) == 2
    err = capsys.readouterr().err
    assert "same cell" in err and "rename" in err and not (tmp_path / "rep2").exists()


def test_tables_have_a_column_for_every_metric_of_any_row(tmp_path):
    from rulegym.train.results import load_runs, markdown_table, summarize, write_tables

    run = _write_run(tmp_path / "run", env="A", steps=5)
    _write_run(run, env="B", steps=40)
    rows = summarize(load_runs([run]), [10])
    assert rows[0]["env"] == "A" and "acc_at_10" not in rows[0] and "acc_at_10" in rows[1]
    write_tables(rows, run)
    for table in (markdown_table(rows), (run / "summary.md").read_text()):
        lines = table.splitlines()
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        assert "acc_at_10" in header and "acc_first_10" in header
        short = [c.strip() for c in lines[2].strip("|").split("|")]
        long = [c.strip() for c in lines[3].strip("|").split("|")]
        assert len(short) == len(long) == len(header)
        assert short[header.index("acc_at_10")] == "" and long[header.index("acc_at_10")] != ""


def test_report_of_lifetimes_shorter_than_every_k(tmp_path, capsys):
    run = _write_run(tmp_path / "run", steps=5)
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0  # ks 10 and 100: heat map of acc_all
    assert (tmp_path / "rep" / "heatmap.png").is_file()
    capsys.readouterr()
    # a metric no row has is refused before anything is written
    assert main(["report", str(run), "--out", str(tmp_path / "rep2"), "--metric", "acc_first_100"]) == 2
    assert "acc_first_100" in capsys.readouterr().err and not (tmp_path / "rep2").exists()


def test_resume_refuses_changed_meta_parameters(tmp_path, no_data):
    import hashlib

    import torch

    from rulegym.agents import make_agent

    params = tmp_path / "sgd.pt"
    torch.save(make_agent("sgd", 16, 2, lr=0.05).state_dict(), params)
    out = tmp_path / "run"

    def config():
        env = {"env_id": "rulegym/SumSign-v0", "options": {"x_shape": 16, "n_classes": 2}}
        return CompareConfig(agents=[{"name": "sgd", "params": str(params)}], envs=[env], seeds=[0], lifetimes=2, steps=10,
                             ks=[5], plots=False, tensorboard=False)

    compare_mod.run_compare(config(), out, progress=False)
    saved = json.loads((out / "config.json").read_text())
    assert saved["params_sha256"] == {"sgd": hashlib.sha256(params.read_bytes()).hexdigest()}
    assert load_compare_config(out / "config.json").agents[0].params == str(params)  # a folder's config still loads
    compare_mod.run_compare(config(), out, progress=False)  # same file: resumes
    torch.save(make_agent("sgd", 16, 2, lr=0.5).state_dict(), params)  # retrained under the same path
    with pytest.raises(CompareConfigError, match="params_sha256"):
        compare_mod.run_compare(config(), out, progress=False)


def test_labels_that_share_a_file_name_are_refused():
    with pytest.raises(CompareConfigError, match=r"'lr:0\.1'.*'lr_0\.1'.*unique|unique.*'lr:0\.1'.*'lr_0\.1'"):
        CompareConfig(agents=[{"name": "sgd", "label": "lr:0.1"}, {"name": "sgd", "label": "lr_0.1"}])
    with pytest.raises(CompareConfigError, match="unique"):
        CompareConfig(agents=["sgd"], envs=[{"env_id": "rulegym/SumSign-v0", "label": "a b"}, {"env_id": "rulegym/Random-v0", "label": "a_b"}])
    with pytest.raises(CompareConfigError, match="unique"):  # '__' parts agent from env in a file name
        CompareConfig(agents=[{"name": "sgd", "label": "a__b"}, {"name": "adam", "label": "a"}],
                      envs=[{"env_id": "rulegym/SumSign-v0", "label": "c"}, {"env_id": "rulegym/Random-v0", "label": "b__c"}])
    cfg = CompareConfig(agents=[{"name": "sgd", "label": "lr:0.1"}, {"name": "sgd", "label": "lr:0.2"}])
    assert [a.label for a in cfg.agents] == ["lr:0.1", "lr:0.2"]


def _cfg_summary(cfg):
    return [(a.label, a.options) for a in cfg.agents], [e.options for e in cfg.envs], cfg.seeds


def test_set_applies_after_the_flags(monkeypatch):
    seen = []
    monkeypatch.setattr(compare_mod, "run_compare", lambda cfg, out, progress: seen.append(cfg) or [{"agent": "sgd", "env": "SumSign", "acc_all": 0.5}])
    assert main(["compare", "--agents", "sgd", "adam", "--envs", "rulegym/SumSign-v0", "--seeds", "4",
                 "--set", "agents.0.options.lr=0.1", "--set", "envs.0.options.x_shape=16", "--set", "seeds=[5]", "--out", "unused"]) == 0
    assert _cfg_summary(seen[-1]) == ([("sgd", {"lr": 0.1}), ("adam", {})], [{"x_shape": 16}], [5])
    assert main(["eval", "--agents", "sgd", "--set", "agents.0.options.lr=0.2", "--out", "unused"]) == 0
    assert _cfg_summary(seen[-1])[0] == [("sgd", {"lr": 0.2})]


def test_bools_are_not_integers():
    for key, value in (("seeds", [True]), ("ks", [True]), ("num_threads", True), ("steps", True)):
        with pytest.raises(CompareConfigError, match=key):
            CompareConfig.from_dict({key: value})
    with pytest.raises(CompareConfigError, match="seeds"):
        load_compare_config(None, ["seeds=[true, 2]"])


def test_a_bad_agent_option_writes_nothing_so_the_fix_can_reuse_the_folder(tmp_path, no_data, capsys):
    out = tmp_path / "run"
    base = ["compare", "--agents", "sgd", "--envs", "rulegym/SumSign-v0", "--out", str(out), *LEAN, *SMALL]
    for bad in ("agents.0.options.lr=NaN", "agents.0.options.lrr=0.1"):
        assert main([*base, "--set", bad]) == 2
        assert "lr" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--set", "agents.0.options.lr=0.1"]) == 0


def test_quick_applies_over_a_config_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('agents = ["sgd"]\nseeds = [0, 1, 2, 3]\nlifetimes = 32\nsteps = 100\n')
    cfg = load_compare_config(path, ["lifetimes=4"], quick=True)
    assert (cfg.seeds, cfg.lifetimes, cfg.steps) == ([0, 1], 4, 200)  # --quick's, then --set's


def test_a_shipped_preset_path_works_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_compare_config("train/presets/first100.toml")
    assert "class_means" in [a.name for a in cfg.agents]
    with pytest.raises(CompareConfigError, match="rulegym list"):
        load_compare_config("train/presets/no_such_preset.toml")


def test_a_rerun_comparison_logs_each_step_once(tmp_path, no_data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = ["compare", "--agents", "sgd", "--envs", "rulegym/SumSign-v0", "--out", str(out), *SMALL]
    assert main(args) == 0
    assert main(args) == 0  # the same command again: nothing to run, the outputs are written again
    logdir = out / "tensorboard" / "sgd"
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("online_accuracy/SumSign")]
    assert len(steps) == len(set(steps)) == 40


def test_report_refuses_ks_below_one(tmp_path, capsys):
    run = _write_run(tmp_path / "run", steps=5)
    for ks in (["0"], ["-5", "3"]):
        assert main(["report", str(run), "--out", str(tmp_path / "rep"), "--ks", *ks]) == 2
        assert "ks must be" in capsys.readouterr().err and not (tmp_path / "rep").exists()


def test_a_missing_data_file_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RULEGYM_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("RULEGYM_OFFLINE", "1")
    monkeypatch.setenv("RULEGYM_CACHE", str(tmp_path / "cache"))
    assert main(["compare", "--agents", "sgd", "--envs", "rulegym/MNIST-v0", "--out", str(tmp_path / "run"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rulegym compare: ") and "Traceback" not in err and "RULEGYM_DATA" in err


def test_a_shipped_rule_is_recorded_by_its_hash():
    from rulegym.agents.pretrained import PRETRAINED

    cfg = CompareConfig.from_dict({"agents": ["vsml_mnist", "sgd"]})
    assert cfg.folder_dict()["params_sha256"] == {"vsml_mnist": PRETRAINED["vsml_mnist"].sha256}  # shipped again: not resumed into


def test_a_cell_with_no_scored_step_has_no_loss():
    from rulegym.train.results import Cell, cell_metrics

    steps = np.zeros((4, 2), bool)
    cell = Cell("sgd", "Omniglot", 0, correct=steps, loss_mask=steps, loss=np.ones((4, 2)), run="x")
    metrics = cell_metrics(cell, [2])
    assert np.isnan(metrics["loss_all"]) and np.isnan(metrics["acc_all"])  # not a perfect 0.0


def test_an_env_that_sets_its_lifetime_runs_all_of_it_and_every_size_is_checked_first(tmp_path, no_data):
    out = tmp_path / "run"
    env = '[{"env_id": "rulegym/Digits-v0", "options": {"lifetime_length": 30}}]'
    assert main(["compare", "--agents", "sgd", "--set", f"envs={env}", "--out", str(out), *LEAN, *SMALL]) == 0  # --steps 40
    with np.load(out / "cells" / "sgd__Digits__s0.npz") as z:
        assert z["correct"].shape[0] == 30
    env = '[{"env_id": "rulegym/Digits-v0", "options": {"lifetime_length": 30, "max_episode_steps": 10}}]'
    assert main(["compare", "--agents", "sgd", "--set", f"envs={env}", "--out", str(tmp_path / "r2"), *LEAN, *SMALL]) == 0
    with np.load(tmp_path / "r2" / "cells" / "sgd__Digits__s0.npz") as z:
        assert z["correct"].shape[0] == 10
    # meta-parameters that fit the first env's sizes but not the second's: refused before anything is written
    import torch

    from rulegym.agents import make_agent

    params = tmp_path / "rnn.pt"
    torch.save(make_agent("meta_rnn", 64, 10, hidden=8).state_dict(), params)
    agents = json.dumps([{"name": "meta_rnn", "options": {"hidden": 8}, "params": str(params)}])
    envs = '[{"env_id": "rulegym/Digits-v0"}, {"env_id": "rulegym/SumSign-v0", "options": {"x_shape": 32}}]'
    assert main(["compare", "--set", f"agents={agents}", "--set", f"envs={envs}", "--out", str(tmp_path / "r3"), *LEAN, *SMALL]) == 2
    assert not (tmp_path / "r3").exists()


def test_loss_is_also_reported_in_bits():
    from rulegym.train.results import Cell, cell_metrics

    mask = np.array([[True], [True], [False]])
    cell = Cell("sgd", "WizardOfOz", 0, correct=mask, loss_mask=mask, loss=np.array([[1.0], [3.0], [9.0]]), run="x")
    metrics = cell_metrics(cell, [])
    assert metrics["loss_all"] == pytest.approx(2.0) and metrics["bits_all"] == pytest.approx(2.0 / np.log(2))
    from rulegym.train.results import markdown_table, summarize

    header = markdown_table(summarize([cell], [])).splitlines()[0]
    assert "| loss_all |" in header and "| bits_all |" in header  # a column of the table, not only of summary.csv
