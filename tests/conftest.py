"""Shared fixtures. Tests use at most 2 torch threads (the CI machine has 2 cores)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from datagen import write_cifar10
from rulegym.envs.data import sources

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the rest of a module: tiny per-step ops lose more to thread
    hand-offs than they gain (on a busy 2-core machine two OpenMP threads made such tests
    5-15x slower). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``;
    module-scoped fixtures that train request it themselves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_data(monkeypatch, tmp_path):
    """No data root and no network: what the embedded default must run with."""
    monkeypatch.setenv("RULEGYM_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("RULEGYM_OFFLINE", "1")


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    """A data root holding a generated CIFAR-10 archive whose checksum the table accepts."""
    root = tmp_path / "data"
    tar = root / "cifar-10" / "cifar-10-python.tar.gz"
    write_cifar10(tar, np.random.default_rng(0), per_batch=20, n_test=10)
    entry = sources.SOURCES["cifar-10/cifar-10-python.tar.gz"]
    md5 = hashlib.md5(tar.read_bytes()).hexdigest()
    monkeypatch.setitem(sources.SOURCES, entry.relpath, type(entry)(entry.relpath, entry.dataset, (), md5=(md5,)))
    monkeypatch.setenv("RULEGYM_CACHE", str(tmp_path / "cache"))
    return root
