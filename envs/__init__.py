"""rulegym.envs: online tasks as gymnasium environments.

Importing this package registers every env id (``rulegym/MNIST-v0``, ...), so
``gym.make(id)`` and ``gym.make_vec(id, num_envs=N)`` work. See :mod:`rulegym.envs.protocol`
for what an observation, action, reward and info mean.
"""

from rulegym.envs.online_env import OnlineEnv, OnlineVectorEnv
from rulegym.envs.protocol import LOGIT_BOUND, Task
from rulegym.envs.registration import EMBEDDED_ENV_IDS, ENVS, TASKS, make_env, make_task, make_vector_env, register_envs

register_envs()

__all__ = [
    "EMBEDDED_ENV_IDS",
    "ENVS",
    "LOGIT_BOUND",
    "OnlineEnv",
    "OnlineVectorEnv",
    "TASKS",
    "Task",
    "make_env",
    "make_task",
    "make_vector_env",
    "register_envs",
]
