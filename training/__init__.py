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
``train``           the loop (``main``) and the command line (``python -m training.train``)
``distributed``     DDP / FSDP2 under torchrun; ``top_layers`` reuses the rollout's frozen activations
``expert_data``     SFT demonstrations; ``episodes``: episode logs; ``baselines``: scripted policies
==================  ================================================================================

Example:
    >>> from training import Args, main, load_trained  # doctest: +SKIP
    >>> result = main(Args(model="tiny-llama", steps=1, out="runs/tiny"))  # doctest: +SKIP
"""

from training.checkpoints import (
    RunDirError,
    latest_checkpoint,
    load_checkpoint,
    load_run_args,
    load_trained,
    save_checkpoint,
)
from training.config import (
    ALGOS,
    HELDOUT_BASE_SEED,
    RECIPE_ALGO_OVERRIDES,
    RECIPES,
    Args,
    heldout_seeds,
    maze_config,
    recipe_args,
    step_turns,
    train_seeds,
    validate,
)
from training.evaluation import EvalResult, compare_evals, eval_settings, evaluate
from training.policy import Policy, load_base_model, make_optimizer, make_policy
from training.train import RunResult, cli, main, parse_args
from training.update import NonFiniteLossError, compute_advantages, select_top_episodes, train_step

__all__ = [
    "ALGOS",
    "HELDOUT_BASE_SEED",
    "RECIPES",
    "RECIPE_ALGO_OVERRIDES",
    "Args",
    "EvalResult",
    "NonFiniteLossError",
    "Policy",
    "RunDirError",
    "RunResult",
    "cli",
    "compare_evals",
    "compute_advantages",
    "eval_settings",
    "evaluate",
    "heldout_seeds",
    "latest_checkpoint",
    "load_base_model",
    "load_checkpoint",
    "load_run_args",
    "load_trained",
    "main",
    "make_optimizer",
    "make_policy",
    "maze_config",
    "parse_args",
    "recipe_args",
    "save_checkpoint",
    "select_top_episodes",
    "step_turns",
    "train_seeds",
    "train_step",
    "validate",
]
