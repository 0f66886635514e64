"""The introspection experiment (VSML Figures 9/17) on the embedded digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from rulegym.train.experiments.introspection import main, occurrence_accuracy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_occurrence_accuracy_hand_case():
    labels = np.array([2, 2, 0, 2, 0, 1])
    correct = np.array([True, False, False, True, True, False])
    acc = occurrence_accuracy(labels, correct)
    assert acc["first_occurrence"] == pytest.approx(1 / 3)  # steps 0, 2, 5
    assert acc["later_occurrences"] == pytest.approx(2 / 3)  # steps 1, 3, 4


def test_introspection_run_writes_consistent_outputs(tmp_path):
    out = tmp_path / "intro"
    assert main(["--agents", "sgd", "tanh_backprop", "--env", "rulegym/Digits-v0", "--set", "num_classes=3",
                 "--steps", "25", "--threads", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    data = np.load(out / "probabilities.npz")
    for agent in ("sgd", "tanh_backprop"):
        probs, labels, correct = data[f"{agent}/probabilities"], data[f"{agent}/labels"], data[f"{agent}/correct"]
        assert probs.shape == (25, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
        assert set(labels.tolist()) <= {0, 1, 2}
        assert np.array_equal(correct, probs.argmax(axis=1) == labels)
        assert summary["agents"][agent]["accuracy"] == pytest.approx(correct.mean())
    assert np.array_equal(data["sgd/labels"], data["tanh_backprop/labels"])  # the same stream
    with Image.open(out / "introspection.png") as im:
        im.verify()


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(SystemExit):
        main(["--agents", "sgd", "--params", "vsml=missing.pt", "--env", "rulegym/Digits-v0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="key=value"):
        main(["--agents", "sgd", "--env", "rulegym/Digits-v0", "--set", "oops", "--out", str(tmp_path)])
    # an item without '=' was dropped, so the untrained agent ran; a missing file was accepted with it
    for params in (["vsml:rules/vsml_mnist.pt"], ["vsml", "missing.pt"], ["vsml=missing.pt"]):
        with pytest.raises(SystemExit) as info:
            main(["--agents", "vsml", "--params", *params, "--env", "rulegym/Digits-v0", "--out", str(tmp_path / "bad")])
        assert info.value.code == 2
    assert not (tmp_path / "bad").exists()


def test_fig8_training_sets():
    from rulegym.train.experiments.vsml_fig8 import training_sets

    sets = training_sets(["A", "B", "C"])
    assert sets["A"] == ["A"] and sets["all"] == ["A", "B", "C"] and sets["no B"] == ["A", "C"]
    assert len(sets) == 3 + 1 + 3


def test_fig8_grid_runs_and_resumes(tmp_path):
    import csv
    import os

    from rulegym.train.experiments import vsml_fig8

    if not os.environ.get("RULEGYM_DATA"):
        pytest.skip("the Figure 8 grid needs a data root: set RULEGYM_DATA (e.g. ../shared/data)")
    args = ["--quick", "--agents", "vsml", "--iterations", "1", "--test-lifetimes", "2", "--test-steps", "5",
            "--threads", "1", "--out", str(tmp_path)]
    assert vsml_fig8.main(args) == 0
    rows = list(csv.DictReader(open(tmp_path / "grid.csv")))
    names = list(vsml_fig8.DATASETS)
    assert len(rows) == 2 * len(names) + 3 * len(names)  # sgd, adam + vsml on MNIST, Random, all
    assert {r["train"] for r in rows if r["agent"] == "vsml"} == {"MNIST", "Random", "all"}
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    params = tmp_path / "rules" / "vsml" / "all" / "meta_params.pt"
    stamp = params.stat().st_mtime_ns
    assert vsml_fig8.main(args) == 0  # a second run reuses the finished rules
    assert params.stat().st_mtime_ns == stamp
    with Image.open(tmp_path / "heatmap_vsml.png") as im:
        im.verify()
    # more iterations continue a finished rule; fewer than a rule has are refused, writing nothing
    more = [*args[:3], "--iterations", "2", *args[5:], "--sets", "Random"]
    random_rule = tmp_path / "rules" / "vsml" / "Random"
    assert vsml_fig8.main(more) == 0
    assert vsml_fig8.trained_iterations(random_rule) == 2 and vsml_fig8.trained_iterations(tmp_path / "rules" / "vsml" / "MNIST") == 1
    grid = (tmp_path / "grid.csv").read_bytes()
    with pytest.raises(SystemExit):
        vsml_fig8.main([*args, "--sets", "Random"])
    assert (tmp_path / "grid.csv").read_bytes() == grid
    # --sets restricts the training sets (processes can split a grid); unknown names are refused
    assert vsml_fig8.main([*args, "--sets", "MNIST"]) == 0
    assert {r["train"] for r in csv.DictReader(open(tmp_path / "grid.csv")) if r["agent"] == "vsml"} == {"MNIST"}
    with pytest.raises(SystemExit):
        vsml_fig8.main([*args, "--sets", "no Nothing"])


def test_fig8_meta_tests_on_lifetimes_no_meta_training_draws(monkeypatch, tmp_path):
    from rulegym.learners.tasks import compare_seed_base, train_seed_base
    from rulegym.train.experiments import vsml_fig8

    seeds = []
    monkeypatch.setattr(vsml_fig8, "meta_test", lambda *a: seeds.append(a[-1]) or (0.5, 0.1))
    monkeypatch.setattr(vsml_fig8, "meta_train_rule", lambda *a: None)
    monkeypatch.setattr(vsml_fig8, "write_outputs", lambda rows, out: None)
    assert vsml_fig8.main(["--quick", "--out", str(tmp_path), "--seed", "3", "--threads", "1"]) == 0
    assert set(seeds) == {compare_seed_base(3)}
    # seed s's training lifetimes are train_seed_base(s) + their position, below train_seed_base(s + 1):
    # the test lifetimes lie above those of every seed < 2**20 (a fixed 10,000 + seed, as before, met
    # seed 0's training lifetimes at iteration 1,250)
    assert compare_seed_base(3) >= train_seed_base(2**20)


def test_fig8_interval_is_the_t_interval_over_test_lifetimes(monkeypatch):
    import math
    from types import SimpleNamespace

    import torch
    from scipy import stats

    from rulegym.train import loop
    from rulegym.train.experiments import vsml_fig8

    correct = torch.tensor([[1, 0, 1], [1, 0, 0], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)  # [steps, lifetimes]
    monkeypatch.setattr(loop, "run_lifetime", lambda agent, env, seed: SimpleNamespace(correct=correct))
    acc, half = vsml_fig8.meta_test("sgd", {"lr": 0.03}, None, "Random", lifetimes=3, length=4, seed=0)
    per_life = np.array([0.75, 0.5, 0.75])
    assert acc == pytest.approx(per_life.mean())
    assert half == pytest.approx(stats.t.ppf(0.975, 2) * per_life.std(ddof=1) / math.sqrt(3))  # not 1.96 * ...
