"""Environment suites and wrappers producing the env contract (docs/ARCHITECTURE.md, docs/envs.md).

Suite modules import their optional packages lazily, so `import torch_dreamer.envs` needs
only gymnasium and numpy.
"""

from torch_dreamer.envs.make import EVAL_SEED_OFFSET, SUITES, make_env, make_vector_env
from torch_dreamer.envs.wrappers import wrap_env

__all__ = ["EVAL_SEED_OFFSET", "SUITES", "make_env", "make_vector_env", "wrap_env"]
