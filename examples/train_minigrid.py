"""The official DreamerV2 MiniGrid example with only its imports changed.

    python examples/train_minigrid.py                      # the official settings
    python examples/train_minigrid.py --prefill 1000       # any key can be overridden from the command line
"""

import gymnasium as gym
import minigrid
import torch_dreamer.api as dv2

config = dv2.defaults.update({
    'logdir': '~/logdir/minigrid',
    'log_every': 1e3,
    'train_every': 10,
    'prefill': 1e5,
    'actor_ent': 3e-3,
    'loss_scales.kl': 1.0,
    'discount': 0.99,
}).parse_flags()

env = gym.make('MiniGrid-DoorKey-6x6-v0')
env = minigrid.wrappers.RGBImgPartialObsWrapper(env)
dv2.train(env, config)
