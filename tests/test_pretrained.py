"""Shipped pretrained rules: every one loads and runs; size-bound rules refuse other sizes with a
clear error; shipping a `rulegym train` run folder round-trips; compare skips cells a rule does
not fit."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from rulegym.agents import make_agent
from rulegym.agents import pretrained
from rulegym.agents.pretrained import PRETRAINED, load_pretrained, main as ship_main, manifest_from_run, ship_rule, size_free
from rulegym.learners import BPTTConfig, meta_train
from rulegym.train.cli import main as cli_main
from rulegym.train.compare import CompareConfig, CompareConfigError, run_compare

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def obs(batch: int, x_dim: int, n_classes: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(batch, x_dim, generator=g), "y_prev": torch.zeros(batch, n_classes), "err_prev": torch.zeros(batch, n_classes)}


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_every_shipped_rule_loads_and_steps(name):
    info = PRETRAINED[name]
    x_dim, n_classes = info.sizes or (12, 3)
    agent = load_pretrained(name, x_dim, n_classes)
    saved = torch.load(info.path, map_location="cpu", weights_only=True)
    assert all(torch.equal(agent.state_dict()[k], v) for k, v in saved.items())
    with torch.no_grad():
        logits, _ = agent.step(obs(2, x_dim, n_classes), agent.initial_state(2))
    assert logits.shape == (2, n_classes) and torch.isfinite(logits).all()
    # the manifest says how it was made
    assert info.description and "command" in info.meta["training"]
    assert (info.sizes is None) == size_free(info.agent, **info.options)
    # ... and the manifest holds the hash of the shipped file (which load_pretrained checks)
    assert info.meta["sha256"] == hashlib.sha256(info.path.read_bytes()).hexdigest()


def test_load_pretrained_checks_the_shipped_files_hash(tmp_path, monkeypatch):
    """ship_rule records the sha256 of the .pt it writes (not of the run's meta_params.pt);
    load_pretrained refuses a parameters file that does not match it, naming the file and the
    fix, and loads a manifest without the key (a rule shipped before it existed) unchecked."""
    rules = tmp_path / "rules"
    state = make_agent("sgd", 4, 3, lr=0.05).state_dict()
    run_file = tmp_path / "meta_params.pt"
    torch.save(state, run_file)
    manifest = {"agent": "sgd", "description": "a test rule", "agent_options": {"hidden": 0}, "training": {"sha256": "run"}}
    path = ship_rule("tiny", state, manifest, rules_dir=rules)
    written = json.loads((rules / "tiny.json").read_text())
    assert written["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert written["training"]["sha256"] == "run" and "sha256" not in manifest  # the caller's manifest untouched
    monkeypatch.setattr(pretrained, "RULES_DIR", rules)
    monkeypatch.setitem(PRETRAINED, "tiny", pretrained._discover()["tiny"])
    assert float(load_pretrained("tiny", 4, 3).lr.detach()) == pytest.approx(0.05)
    # the same tensors saved again by someone else: different bytes, refused
    torch.save({k: v.clone() for k, v in state.items()}, path)
    if hashlib.sha256(path.read_bytes()).hexdigest() == written["sha256"]:  # torch.save may be deterministic
        torch.save({k: v + 1.0 for k, v in state.items()}, path)
    with pytest.raises(ValueError, match=r"tiny\.pt has sha256 .*records .*Reinstall rulegym, or re-ship"):
        load_pretrained("tiny", 4, 3)
    # an older manifest without the key loads unchecked
    del written["sha256"]
    (rules / "tiny.json").write_text(json.dumps(written))
    monkeypatch.setitem(PRETRAINED, "tiny", pretrained._discover()["tiny"])
    assert PRETRAINED["tiny"].sha256 is None
    load_pretrained("tiny", 4, 3)


def test_overrides_that_change_meta_parameter_shapes_get_a_clear_error():
    with pytest.raises(ValueError, match=r"'vsml_mnist' does not fit a vsml built with the options \{'state_size': 8\}.*shapes differ.*cells\.0\.u"):
        load_pretrained("vsml_mnist", 64, 10, state_size=8)
    with pytest.raises(ValueError, match=r"shapes differ.*'eta': \(\(\), \(84, 10\)\)"):
        load_pretrained("hebbian_mnist", 64, 10, eta_per_connection=True)
    # an override that keeps the shapes still works
    assert load_pretrained("vsml_mnist", 64, 10, ticks=3).ticks == 3


def test_size_bound_rules_name_their_sizes():
    bound = {n: i for n, i in PRETRAINED.items() if i.sizes is not None}
    assert {"meta_rnn_mnist", "hebbian_mnist"} <= set(bound)
    for name, info in bound.items():
        assert info.sizes == (64, 10)
        with pytest.raises(ValueError, match=r"fit x_dim=64, n_classes=10 only, not x_dim=784.*resize=8"):
            load_pretrained(name, 784, 10)
    # a size-free rule runs at any size
    assert PRETRAINED["vsml_mnist"].sizes is None
    load_pretrained("vsml_mnist", 784, 10)


def test_size_free():
    assert size_free("vsml") and size_free("sgd")
    assert not size_free("meta_rnn") and not size_free("hebbian")


def test_ship_a_train_run_folder(tmp_path):
    task = {"env_id": "rulegym/Random-v0", "options": {"x_shape": 6, "n_images": 3, "n_classes": 3, "lifetime_length": 8}}
    run = tmp_path / "run"
    cfg = BPTTConfig(agent="meta_rnn", agent_options={"hidden": 8}, tasks=[task], iterations=2, batch_size=2, progress=False, eval_every=0)
    params, _ = meta_train(cfg, run)
    state, manifest = manifest_from_run(run, "a tiny Meta RNN", in_default_compare=False)
    assert (manifest["x_dim"], manifest["n_classes"]) == (6, 3)
    assert manifest["agent"] == "meta_rnn" and manifest["agent_options"] == {"hidden": 8}
    assert manifest["training"]["iterations"] == 2 and len(manifest["training"]["sha256"]) == 64
    # a run resumed with more iterations and stopped before its first new checkpoint: its config
    # says 5, its meta_params.pt (and summary.json) the 2 they went through
    config_json = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config_json, "iterations": 5}))
    assert manifest_from_run(run, "x")[1]["training"]["iterations"] == 2
    (run / "config.json").write_text(json.dumps(config_json))
    rules = tmp_path / "rules"
    path = ship_rule("tiny_rnn", state, manifest, rules_dir=rules)
    loaded = torch.load(path, weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in params.items())
    assert json.loads((rules / "tiny_rnn.json").read_text())["description"] == "a tiny Meta RNN"
    assert not list(rules.glob("*.tmp"))
    agent = make_agent("meta_rnn", 6, 3, hidden=8)
    agent.load_state_dict(loaded)
    # a size-free agent's manifest records no sizes
    run_v = tmp_path / "run_vsml"
    meta_train(cfg.replace(agent="vsml", agent_options={"state_size": 4, "msg_size": 2}), run_v)
    assert "x_dim" not in manifest_from_run(run_v, "tiny vsml")[1]
    with pytest.raises(ValueError, match="identifier"):
        ship_rule("bad name", state, manifest, rules_dir=rules)
    # shipping again, interrupted while writing the manifest: the rule shipped before is intact
    before = {p.name: p.read_bytes() for p in rules.iterdir()}

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(rules), "write_text", interrupted)
        with pytest.raises(KeyboardInterrupt):
            ship_rule("tiny_rnn", {k: v + 1 for k, v in state.items()}, manifest, rules_dir=rules)
    assert {p.name: p.read_bytes() for p in rules.iterdir()} == before  # no temp files left either
    with pytest.raises(FileNotFoundError, match="no config.json"):
        manifest_from_run(tmp_path / "nowhere", "x")
    with pytest.raises(SystemExit):
        ship_main([str(run), "x"])  # --description is required


def test_default_compare_runs_every_shipped_default_rule_on_every_embedded_task():
    cfg = CompareConfig()
    names = [a.name for a in cfg.agents]
    assert {"vsml_mnist", "meta_rnn_mnist", "hebbian_mnist", "sgd", "adam"} <= set(names)
    assert names.index("vsml_mnist") < names.index("meta_rnn_mnist")  # size-free rules first
    assert {e.label for e in cfg.envs} == {"Digits", "Random", "SumSign"}


def test_compare_skips_cells_a_rule_does_not_fit(tmp_path, no_data, capsys):
    small = {"env_id": "rulegym/Random-v0", "options": {"x_shape": 64}, "label": "Random64"}
    large = {"env_id": "rulegym/Random-v0", "options": {"x_shape": 100}, "label": "Random100"}
    cfg = CompareConfig(agents=["meta_rnn_mnist", "sgd"], envs=[small, large], seeds=[0], lifetimes=2, steps=10, plots=False, tensorboard=False)
    rows = run_compare(cfg, tmp_path / "run", progress=False)
    assert {(r["agent"], r["env"]) for r in rows} == {("meta_rnn_mnist", "Random64"), ("sgd", "Random64"), ("sgd", "Random100")}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["skipped"] == [["meta_rnn_mnist", "Random100"]]
    assert "skipping meta_rnn_mnist on Random100" in capsys.readouterr().err
    with pytest.raises(CompareConfigError, match="fits none of the envs.*resize=8"):
        run_compare(cfg.__class__(agents=["hebbian_mnist"], envs=[large], seeds=[0], lifetimes=2, steps=10), tmp_path / "run2", progress=False)
    assert not (tmp_path / "run2").exists()  # refused before anything was written


def test_list_shows_the_sizes_of_size_bound_rules(capsys):
    assert cli_main(["list"]) == 0
    out = capsys.readouterr().out
    assert "meta_rnn_mnist" in out and "[x_dim=64, n_classes=10 only]" in out


def test_params_replace_a_shipped_rules_meta_parameters_keeping_its_options(tmp_path):
    """A compare agent naming a shipped rule with ``params`` runs the rule's agent options with
    the given meta-parameters (e.g. a further-trained copy of the rule)."""
    from rulegym.train.compare import AgentSpec

    rule = load_pretrained("vsml_backprop_clone", 6, 3)
    state = {k: v + 0.01 for k, v in rule.state_dict().items()}
    torch.save(state, tmp_path / "meta_params.pt")
    built = AgentSpec("vsml_backprop_clone", params=str(tmp_path / "meta_params.pt")).build(6, 3)
    assert built.freeze_forward and not built.label_feed and built.back_cells is not None  # the rule's (non-default) options
    for key, value in built.state_dict().items():
        assert torch.equal(value, state[key]), key
    plain = AgentSpec("vsml_backprop_clone").build(6, 3)
    assert torch.equal(plain.cells[0].u, rule.cells[0].u)
