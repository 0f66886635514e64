"""rulegym.learners: meta-training of agents (BPTT and OpenAI-ES), on one process or many.

    from rulegym.learners import BPTTConfig, ESConfig, meta_train
    params, logs = meta_train(BPTTConfig(agent="meta_rnn", iterations=100), "runs/demo")

Command line: ``python -m rulegym.learners --config run.toml --run-dir DIR [--set k=v] [--resume]``,
and the same under ``torchrun --nproc_per_node=N -m rulegym.learners ...``.
"""

from rulegym.learners.config import (
    BPTTConfig,
    ConfigError,
    ESConfig,
    LearnerConfig,
    TaskSpec,
    apply_overrides,
    config_from_dict,
    load_config,
)
from rulegym.learners.tasks import TaskMixture, TaskShapeError
from rulegym.learners.checkpoint import load_checkpoint, save_checkpoint
from rulegym.learners.distributed import DistContext, init_distributed, shard
from rulegym.learners.base import Learner
from rulegym.learners.bptt import BPTTLearner
from rulegym.learners.es import ESLearner, centered_ranks
from rulegym.learners.run import make_learner, meta_train
from rulegym.learners.remember import RememberConfig, RememberResult, train_remember

__all__ = [
    "BPTTConfig",
    "RememberConfig",
    "RememberResult",
    "BPTTLearner",
    "ConfigError",
    "DistContext",
    "ESConfig",
    "ESLearner",
    "Learner",
    "LearnerConfig",
    "TaskMixture",
    "TaskShapeError",
    "TaskSpec",
    "apply_overrides",
    "centered_ranks",
    "config_from_dict",
    "init_distributed",
    "load_checkpoint",
    "load_config",
    "make_learner",
    "meta_train",
    "save_checkpoint",
    "shard",
    "train_remember",
]
