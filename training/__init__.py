"""Train a language model in the maze: Dr. GRPO, GRPO, REINFORCE, RLOO, PPO, TBRM, SFT, Iterative-SFT.

The package reads in the order of a run:

==================  ================================================================================
module              what it holds
==================  ================================================================================
``config``          ``Args`` (every setting, saved as ``config.json``), recipes, validation, seeds
``rollout``         the episode record and the KV-reusing, action-masked sampler
``policy``          the model with LoRA adapters (or all weights), its reference, optimizer, precision
``losses``          the algorithms' maths (advantages, surrogates, entropy, KL, TBRM, SFT)
``update``          one optimisation step over a batch of episodes
``evaluation``      held-out evaluation with standard errors, and paired comparisons
``checkpoints``     atomic safetensors + JSON checkpoints, the final adapter, loading a run back
``shipped``         the trained adapters that ship with the toolkit (``load_trained(model, recipe)``)
``train``           the loop (``main``) and the command line (``python -m training.train``)
``distributed``     DDP / FSDP2 under torchrun; ``top_layers`` reuses the rollout's frozen activations
``expert_data``     SFT demonstrations; ``episodes``: episode logs; ``baselines``: scripted policies
==================  ================================================================================

Example:
    >>> from training import Args, main, load_trained  # doctest: +SKIP
    >>> result = main(Args(model="tiny-llama", steps=1, out="runs/tiny"))  # doctest: +SKIP
"""

import importlib
from typing import Any

_EXPORTS = {
    "ALGOS": "training.config",
    "Args": "training.config",
    "EvalResult": "training.evaluation",
    "HELDOUT_BASE_SEED": "training.config",
    "NonFiniteLossError": "training.update",
    "Policy": "training.policy",
    "RECIPES": "training.config",
    "RECIPE_ALGO_OVERRIDES": "training.config",
    "RunDirError": "training.checkpoints",
    "RunResult": "training.train",
    "cli": "training.train",
    "compare_evals": "training.evaluation",
    "compute_advantages": "training.update",
    "eval_settings": "training.evaluation",
    "evaluate": "training.evaluation",
    "heldout_seeds": "training.config",
    "latest_checkpoint": "training.checkpoints",
    "load_base_model": "training.policy",
    "load_checkpoint": "training.checkpoints",
    "load_run_args": "training.checkpoints",
    "load_shipped": "training.shipped",
    "load_trained": "training.checkpoints",
    "main": "training.train",
    "make_optimizer": "training.policy",
    "make_policy": "training.policy",
    "maze_config": "training.config",
    "parse_args": "training.train",
    "recipe_args": "training.config",
    "save_checkpoint": "training.checkpoints",
    "select_top_episodes": "training.update",
    "shipped_models": "training.shipped",
    "step_turns": "training.config",
    "train_seeds": "training.config",
    "train_step": "training.update",
    "validate": "training.config",
}
"""Public name -> the module that defines it; imported on first use (PEP 562), so a worker that only
needs ``training.distributed`` does not load the whole trainer."""


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
