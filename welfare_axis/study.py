"""The whole study in one call: train → vectors (u untrained, v trained) → readouts → steering → report.

(Over 600 lines: the study's settings, its presets and the stages that read them stay together, so a
preset and the stage it changes are read side by side; the report itself is ``welfare_axis.report``.)

Each stage is cached by a hash of its settings and inputs (``welfare_axis.stages``), so a rerun skips
what is done and an interrupted run resumes (training from its last checkpoint). The result is
``<out>/report.html`` (self-contained) and ``<out>/summary.json`` with the headline numbers next to the
paper's.

Example:
    >>> cfg = StudyConfig.preset("fast")
    >>> cfg.fast, cfg.model
    (True, 'smollm2-135m-instruct')
    >>> StudyConfig.from_overrides(StudyConfig(), {"algo": "sft"}).algo
    'sft'
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from maze_env.plots import episode_figure, training_curves
from probes import layers as _layers
from probes.activation_cache import default_activation_cache_dir
from probes.artifacts import file_sha256, read_json, write_json, write_text
from probes.concept_vector import ConceptVector
from probes.plots import axis_monitor_figure, layer_cosine_curves
from probes.readout_report import ReportSettings, load_figures, readout_report, report_emotion_vectors
from probes.readouts import Estimate, ReadoutReport
from steering.evals.capability import capability_change, general_texts, perplexity, qa_accuracy
from steering.plots import dose_response_figure
from steering.reliability import Reliability, reliability_table
from steering.stats import dose_response_slopes, summarize_cells
from steering.sweep import SweepConfig, load_records, run_sweep
from training import Args, load_base_model, load_trained, main, recipe_args
from training.checkpoints import RunDirError, latest_checkpoint, load_run_args
from training.config import RUN_ONLY_ARGS, validate
from training.episodes import load_episodes
from training.evaluation import EvalResult, compare_evals, eval_settings, untrained_evaluation
from training.monitor import MONITOR_FILE, axis_records
from training.shipped import find_shipped, load_shipped
from welfare_axis.report import export_figures, render_report
from welfare_axis.stages import StageOutput, StageRunner
from welfare_axis.summary import Measure, StudySummary, TrainingSummary, readout_measures

if TYPE_CHECKING:
    from welfare_axis.report import Section

# The paper's headline numbers (shared/research/paper_welfare_axis.md §C), shown beside ours.
PAPER = {
    "cos_min_trained": "−0.84 to −0.95 (10 models; primary −0.947)",
    "cos_min_control": "−0.13 to −0.23",
    "cos_avg_trained": "−0.210 (primary)",
    "cos_avg_control": "+0.089 (primary)",
    "centred_mold_gold_trained": "−0.465 to −0.893 (primary −0.813)",
    "centred_mold_gold_control": "−0.002 to +0.191",
    "slope_trained": "≈ −1 (tight line)",
    "slope_control": "unstructured cloud",
    "maze_d_gold_vector_trained": "> 1.6 (Qwen3-4B-Base)",
    "maze_d_gold_vector_control": "< 0.12",
    "v_mold_top_raw_trained": "failure / impossibility tokens (不存在, cannot, 是不可能, 不行)",
    "path_reference_last_layer_trained": "−0.60 (primary)",
    "path_reference_last_layer_control": "positive at all layers",
    "steer_sentiment_slope_v_gold": "+0.71 per unit α (judge, −5..5)",
    "steer_sentiment_slope_v_mold": "−0.23 per unit α",
    "steer_p_true_slope_v_gold": "+0.15 per unit α",
    "steer_p_true_slope_v_mold": "−0.12 to −0.13 per unit α",
    "rotation": "alignment with the sentiment, emotion-PC1 and VAA axes grows roughly monotonically with rollout "
    "reward over steps 5→95 (App. G; layers ~18–28)",
}


LEARN_OVERRIDES: dict[str, Any] = {"lora_layers": None, "lr": 5e-4, "top_lr": 2e-3, "top_lr_layers": 8, "steps": 4,
                                   "curriculum_steps": 4}  # fmt: skip
"""The default study's changes to the CPU recipe's TBRM (issue 17): LoRA on all layers, so v can differ from u wherever
it is read, the top 8 layers at the recipe's lr 2e-3 (``training.Args.top_lr``) and the 22 below at a quarter of it,
for 4 single-turn steps (since session 24: the fewest measured that learn; after 2 steps the 6-step runs gained −0.3,
+20.3 and +1.9; 3 steps gained +11.9 ± 7.3, z 1.6, in seed 0, session 25; 2 update passes instead of 3 made it worse,
also for 3 steps at twice the lr: z −2.5 and −3.2, sessions 25–26). 2e-3 on every layer collapses and 5e-4 on every
layer learns slowly (presets ``tbrm-6-steps``, ``tbrm-8-steps``). On 2 AMD Zen 4 cores seeds 0-2 gain +35.6 (z 4.7),
+31.4 (z 4.4) and +15.8 (z 2.9) on 64 held-out 15-turn mazes; the same settings for 6 steps (preset
``top-lr-6-steps``, the default of sessions 21-23) gained +36.9, +28.7 and +12.5 on Sapphire Rapids cores (z 5.3,
4.2, 2.2) and +33.7 in seed 0 on Zen 4 cores, in 1.5 times the training time. Every setting and seed, with intervals
and forgetting: docs/results.md (sessions 20-24)."""
TOP_LR_SIX_STEP_OVERRIDES: dict[str, Any] = {
    "lora_layers": None,
    "lr": 5e-4,
    "top_lr": 2e-3,
    "top_lr_layers": 8,
}
"""The default study's training in sessions 21-23 (the recipe's 6 steps): records ``default_toplr_smollm2_seed0*``,
training runs ``tbrm_top_lr_seed*``; preset ``top-lr-6-steps``."""
EIGHT_STEP_OVERRIDES: dict[str, Any] = {"lora_layers": None, "lr": 5e-4, "steps": 8, "curriculum_steps": 8}
"""The default study's training in session 20 (8 steps, lr 5e-4 on every layer): records ``default8_smollm2_seed0``,
``tbrm8_smollm2_seed*_n150``; preset ``tbrm-8-steps``."""
SIX_STEP_OVERRIDES: dict[str, Any] = {"lora_layers": None, "lr": 5e-4}
"""The default study's training until session 20 (6 steps): its records in docs/study_runs (``default_smollm2*``,
``tile_swap_smollm2*``, ``tbrm_smollm2_seed*_n150``); preset ``tbrm-6-steps``."""
SHORT = {"algo": "dr_grpo", "train_sizes": "study", "train_overrides": {}}
"""The study's earlier default (3 Dr. GRPO steps with LoRA on the top 16 layers, ~26 min end to end): it does not
teach the maze (paired z 2.0), kept as the ``short`` preset and as the base of the algorithm presets."""


@dataclass(frozen=True)
class StudyConfig:
    """Settings of one study. Every field can be set from the command line with ``--set key=value``."""

    model: str = "smollm2-135m-instruct"
    """Model to train and study (bundled name, HF id or local path)."""
    trained: str | None = None
    """Study a trained model that ships with the toolkit instead of training one: its recipe name
    (``training.shipped``; ``welfare-axis run --trained tbrm``). The train stage then records the shipped
    model's provenance (its held-out evaluation and paired gain) and trains nothing."""
    from_run: str | None = None
    """Study a finished training run instead of training one: its directory (``welfare-axis train --out``,
    e.g. a DPO, SFT or RL-against-a-reward-model run). The train stage records the run's settings and held-out
    evaluation and trains nothing; the model and tiles must be the run's (``welfare-axis run --from-run DIR``
    sets them)."""
    algo: str = "tbrm"
    """Training algorithm (training.train: dr_grpo, grpo, reinforce, rloo, ppo, tbrm, sft, iterative_sft). The
    default, TBRM (RL from scratch) under the CPU recipe's sizes with LoRA on every layer, its top 8 layers at
    the recipe's step and the rest at a quarter of it, for 4 steps (:data:`LEARN_OVERRIDES`)."""
    warm_start: str | None = None
    """Train this algorithm first, then the study's ``algo`` from its weights (``training.Args.init_from``):
    ``sft`` makes RL after an SFT warm start (preset ``sft-grpo``). The warm start runs the same recipe with
    its own values for that algorithm (:meth:`warm_start_args`), the study's model, tiles, seed and LoRA. The
    training gain reported is over the untrained model; the second run's gain over the warm start is beside it."""
    warm_start_overrides: dict[str, Any] = field(default_factory=dict)
    """training.Args fields of the warm start alone (``train_overrides`` are the second run's). Both runs must
    be evaluated alike (same held-out mazes, turns and sampling), which the study checks."""
    warm_start_run: str | None = None
    """A finished run to use as the warm start instead of training it again: its settings must equal
    :meth:`warm_start_args` in everything but the output directory (checked), so it is the same training made
    earlier (e.g. ``welfare-axis train --recipe cpu --algo sft --out runs/sft_cpu`` is seed 0's)."""
    tiles: str = "office"
    """tile set: office, swap (Mold↔Gold) or shuffle (3-way)."""
    system_prompt: str = "template"
    """template (the chat template as shipped; SmolLM2's adds its default system prompt) or none (no system
    block, as the paper's Qwen3 renders a chat without one). Training and every readout use the same."""
    finetune: str = "lora"
    """lora or full fine-tuning."""
    train_recipe: str = "cpu"
    """training.train preset the run starts from."""
    train_sizes: str = "recipe"
    """study: the recipe's settings under the study's small sizes (:data:`STUDY_TRAIN`, 3 steps); recipe:
    the training recipe itself, with its per-algorithm values (the CPU recipe's TBRM learns the maze),
    under ``train_overrides``. Fast mode always uses :data:`FAST_TRAIN`."""
    train_steps: int | None = None
    """Override the number of optimisation steps (the preset's, or a ``steps`` in ``train_overrides``: the default's
    4); the curriculum's single-turn steps stay as set (the default's 4, then 15-turn steps)."""
    train_overrides: dict[str, Any] = field(default_factory=lambda: dict(LEARN_OVERRIDES))
    """Any other training.Args fields (default :data:`LEARN_OVERRIDES`: every layer adapted, the top 8 at lr 2e-3
    and the rest at 5e-4, 4 steps).
    ``--set train_overrides=...`` replaces the whole dict."""
    n_per_class: int = 24
    """Scripted trajectories per class (Mold, Gold, Path) for the vectors (paper: 5,000)."""
    readout_scale: str = "study"
    """Readout sizes: study (:data:`STUDY_READOUTS`, sized for the 30-minute run), full (probes.readout_report
    defaults), fast (a few texts each, full maze) or smoke (tiny mazes)."""
    steer_model: str = "base"
    """Which model is steered: base (maze-naive, the paper's main setting) or trained."""
    control_layer: str = "trained"
    """Where the control u is steered: trained (at v's ℓ*, norm-matched per layer; the default, so v and u
    differ only in direction) or own (at u's own ℓ*, scaled so that ‖u‖ there equals ‖v‖ at v's ℓ*, as the
    paper's Table 27 reports each vector at its own layer)."""
    layer_star_layers: str = "all"
    """Where ℓ* (and the emotion layer) may be chosen, for v and u alike: all (every layer, the paper's rule;
    the default, since the default study adapts every layer) or adapted (only the layers training changed:
    with LoRA on the top k layers the top k, so that ℓ*-readouts and steering read where v can differ from u,
    e.g. the sft-grpo preset's top 8). Per-layer curves always cover every layer."""
    activation_cache: bool = True
    """Reuse the extraction's activations across studies (``probes.activation_cache``, in
    ``$WELFARE_AXIS_ACTIVATION_CACHE`` or ``~/.cache/welfare-axis/activations``) where the model's weights, the
    trajectories and the capture settings match: the untrained model's are the same for every seed of a
    configuration (about 9 min of SmolLM2 at 150 per class). The numbers are identical either way."""
    steer_evals: tuple[str, ...] = ("sentiment", "confidence", "refusal", "backtracking")
    """Steering evaluations to run."""
    alphas: tuple[float, ...] = (-4.0, -2.0, 0.0, 2.0, 4.0)
    """Steering multipliers (paper grid); the control u is norm-matched to v at every α."""
    n_prompts: int = 3
    """Prompts per steering cell."""
    n_samples: int = 1
    """Samples per prompt per steering cell."""
    max_new_tokens: int = 24
    """Tokens generated per steered response."""
    forgetting_qa: int = 50
    """QA items for the before/after capability check."""
    forgetting_texts: int = 30
    """General-text passages for the before/after perplexity."""
    seed: int = 0
    """Seed of training, sampling and steering."""
    fast: bool = False
    """Smaller settings everywhere (minutes, not tens of minutes); the report says so."""
    checkpoint_series: bool = False
    """Control (paper App. G): v_Mold and v_Gold at every kept training checkpoint, their rotation away from
    u and onto the base model's emotion valence axis (welfare_axis.checkpoint_series). Needs the checkpoints kept:
    preset checkpoint-series sets train_overrides keep_checkpoints/checkpoint_every."""
    series_n_per_class: int | None = None
    """Trajectories per class at each checkpoint of the series (None: n_per_class)."""

    @classmethod
    def preset(cls, name: str) -> StudyConfig:
        try:
            overrides = PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown study preset {name!r}; choose one of {sorted(PRESETS)}") from None
        return cls.from_overrides(cls(), overrides)

    @classmethod
    def from_overrides(cls, base: StudyConfig, overrides: Mapping[str, Any]) -> StudyConfig:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise KeyError(f"unknown study setting(s) {unknown}; valid settings: {sorted(fields)}")
        merged = {**dataclasses.asdict(base), **overrides}
        for key, value in overrides.items():  # on/off settings: True/False (also "true"/"false" from --set)
            if isinstance(getattr(base, key), bool) and not isinstance(value, bool):
                if str(value).lower() not in ("true", "false"):
                    raise ValueError(f"{key} is on or off: give True or False, got {value!r}")
                merged[key] = str(value).lower() == "true"
        for key in ("steer_evals", "alphas"):
            merged[key] = tuple(merged[key])
        return cls(**merged)

    def train_args(self, out: Path, init_from: Path | None = None):
        """The run's ``training.Args``: the preset (not its per-algorithm recipes), then the study's
        sizes (:data:`STUDY_TRAIN` or :data:`FAST_TRAIN`), then ``train_overrides``, then ``train_steps``;
        ``init_from`` is the warm start's run directory (:meth:`warm_start_args`). A fast study (a pipeline
        check) keeps its own few steps and no curriculum, whatever step count ``train_overrides`` gives the full
        run (e.g. ``tbrm-8-steps``'s 8); ``train_steps`` still sets them."""

        overrides = self._sized({"algo": self.algo, "out": str(out)})
        overrides.update(self.train_overrides)
        if self.train_steps is not None:  # wins over a step count in train_overrides (the default's 4)
            overrides["steps"] = self.train_steps
        if self.fast:
            overrides["steps"] = FAST_TRAIN["steps"] if self.train_steps is None else self.train_steps
            overrides["curriculum_steps"] = FAST_TRAIN["curriculum_steps"]
        if init_from is not None:
            overrides["init_from"] = str(init_from)
        return recipe_args(self.train_recipe, per_algorithm=self._from_recipe, **overrides)

    def warm_start_args(self, out: Path):
        """The warm start's ``training.Args``: ``warm_start`` under the same recipe and sizes as the study's
        run (the recipe's own values for that algorithm), with the study's model, tiles, seed and the run's
        LoRA settings (``init_from`` needs the same adapter); ``train_steps`` and ``train_overrides`` belong to
        the second run and are not applied, ``warm_start_overrides`` are.

        Example:
            >>> StudyConfig.preset("sft-grpo").warm_start_args(Path("w")).lr  # the CPU recipe's SFT lr
            0.002
        """
        if self.warm_start is None:
            raise ValueError("this study has no warm start (set warm_start, e.g. --preset sft-grpo)")
        main = self.train_args(out)
        lora = {k: getattr(main, k) for k in ("lora_r", "lora_alpha", "lora_layers", "lora_targets")}
        overrides = self._sized({"algo": self.warm_start, "out": str(out)}) | lora | self.warm_start_overrides
        return recipe_args(self.train_recipe, per_algorithm=self._from_recipe, **overrides)

    @property
    def trains_pipeline_check(self) -> bool:
        """Fast mode training its own model: its few steps do not teach, so the run is a pipeline check."""
        return self.fast and self.trained is None and self.from_run is None

    @property
    def _from_recipe(self) -> bool:
        if self.train_sizes not in ("study", "recipe"):
            raise ValueError(f"train_sizes must be study or recipe; got {self.train_sizes!r}")
        return self.train_sizes == "recipe" and not self.fast

    def _sized(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """The settings every training run of the study shares, then its sizes unless the recipe's own."""
        out: dict[str, Any] = {"model": self.model, "tiles": self.tiles, "finetune": self.finetune,
                               "seed": self.seed, "system_prompt": self.system_prompt, **overrides}  # fmt: skip
        if not self._from_recipe:
            out.update(FAST_TRAIN if self.fast else STUDY_TRAIN)
        return out


_STUDY_OPTIMISER = {"lr": 2e-4, "anneal_fraction": 1.0, "minibatches": 1, "temperature": 0.7,
                    "entropy_coef": 0.05, "curriculum_turns": None, "curriculum_steps": 0,
                    "sft_targets": "expert"}  # fmt: skip
"""The optimiser settings the documented study runs were made with (the CPU recipe's before it gained its
curriculum); pinned so that the study keeps them; ``StudyConfig.train_overrides`` changes them."""
STUDY_TRAIN = {
    "steps": 3,
    "eval_episodes": 24,
    "lora_layers": 16,
    "checkpoint_every": 8,
    **_STUDY_OPTIMISER,
}
"""The default study trains 3 steps of the CPU recipe (16 fifteen-turn episodes each) with LoRA on the top 16
layers and evaluates 24 held-out mazes before and after (about 11 minutes on 2 CPU cores), so that the
whole study fits 30 minutes (measured: 26.4 minutes). 16 layers cover the layers the paper's selection rule
picks for SmolLM2 with 150 trajectories per class (Mold L22, Gold L14 of 30), where v can differ from u.
With the default's 24 per class the rule is noisy and can pick a lower layer (the measured run: L9); the
report says so when it does. ``--set train_steps=12`` trains as many steps as the CPU recipe."""
FAST_TRAIN = {
    "steps": 3,
    "episodes_per_step": 4,
    "group_size": 4,
    "n_turns": 5,
    "eval_episodes": 8,
    "checkpoint_every": 1,
    "lora_layers": 16,
    **_STUDY_OPTIMISER,
}
"""Fast mode trains 3 steps of 4 five-turn episodes and evaluates 8 five-turn episodes (about a minute)."""
STUDY_READOUTS = {
    "n_turns": 15,
    "stories_per_emotion": 2,
    "tracking_n": 12,
    "feedback_n": 40,
    "q_episodes": 8,
    "probe_episodes": 12,
    "probe_layer_stride": 3,
}
"""Readout sizes of ``readout_scale="study"`` (the default, about 4.5 minutes per model on 2 CPU cores): the
paper's 100×100 maze and 15-turn trajectories, fewer texts and episodes per readout than probes.readout_report's
defaults (``readout_scale="full"``, about 22 minutes per model)."""
SERIES_EMOTIONS = {"n_emotions": None, "stories_per_emotion": None, "n_neutral": None}
"""Emotion subset of the checkpoint series' fixed valence axis (None: every shipped story and neutral text)."""
FAST_SERIES_EMOTIONS = {"n_emotions": 12, "stories_per_emotion": 4, "n_neutral": 24}
"""The same in fast mode (12 emotions spanning the valence range, 4 stories each)."""

SFT_GRPO: dict[str, Any] = {"warm_start": "sft", "algo": "dr_grpo",
                            "train_overrides": {"curriculum_steps": 0, "lr": 2e-4, "entropy_coef": 0.2}}  # fmt: skip
"""RL after an SFT warm start (preset ``sft-grpo``; ``gemma-sft-grpo`` changes only its model, step sizes and ℓ* rule)."""

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "short": SHORT,
    "fast": {"fast": True, "readout_scale": "fast", "steer_evals": ("sentiment", "confidence"),
             "alphas": (-4.0, 0.0, 4.0), "forgetting_qa": 20, "forgetting_texts": 12},
    # The paper's robustness table, one preset each.
    "tile-swap": {"tiles": "swap"},
    "tile-shuffle": {"tiles": "shuffle"},
    # The default's settings on Gemma-3-270M, unchanged (a model-family control). They break Gemma: its first step
    # moves the policy 10^4 nats, the held-out return falls 34 and perplexity goes 15 -> 1227 (docs/results.md,
    # session 25); the report says so. gemma-sft-grpo is the Gemma configuration that learns.
    "gemma": {"model": "gemma3-270m"},
    # Other algorithms at the short study's sizes (3 steps, top 16 layers).
    "sft": {**SHORT, "algo": "sft"},
    "iterative-sft": {**SHORT, "algo": "iterative_sft"},
    # RL after an SFT warm start (docs/training_results.md): the CPU recipe's SFT, then 12 Dr. GRPO steps of
    # 15 turns at lr 2e-4 (the recipe's LoRA on the top 8 layers, as the recorded runs)
    "sft-grpo": SFT_GRPO,
    # The same on Gemma-3-270M at a quarter of both step sizes: at the recipe's SFT lr 2e-3 Gemma's first update
    # diverges and its moves stay at chance (docs/training_runs/gemma_sft_cpu_preset); at 5e-4 SFT fits the expert
    # (docs/training_runs/gemma_sft_lr5e-4). Dr. GRPO keeps SmolLM2's ratio to SFT (a tenth). ℓ* among the adapted
    # layers, where v can differ from u.
    "gemma-sft-grpo": {**SFT_GRPO, "model": "gemma3-270m", "warm_start_overrides": {"lr": 5e-4},
                       "layer_star_layers": "adapted", "train_overrides": {**SFT_GRPO["train_overrides"], "lr": 5e-5}},
    # The same on SmolLM2 with every layer adapted (LoRA on all 30), at Gemma's step sizes: a quarter of each, as
    # TBRM needs on every layer (docs/results.md, session 17: seed 0 +43.4, of which Dr. GRPO +3.1 ± 6.2; seed 1's SFT
    # stays near chance, −3.1; about 39 min and 16 GB).
    "sft-grpo-all": {**SFT_GRPO, "warm_start_overrides": {"lr": 5e-4},
                     "train_overrides": {**SFT_GRPO["train_overrides"], "lr": 5e-5, "lora_layers": None}},
    "reinforce": {**SHORT, "algo": "reinforce"},
    "tbrm-short": {**SHORT, "algo": "tbrm"},
    # The default's settings under the name the session-8 records use.
    "learn": {},
    "top-lr-6-steps": {"train_overrides": dict(TOP_LR_SIX_STEP_OVERRIDES)},
    "tbrm-6-steps": {"train_overrides": dict(SIX_STEP_OVERRIDES)},
    "tbrm-8-steps": {"train_overrides": dict(EIGHT_STEP_OVERRIDES)},
    "full-ft": {**SHORT, "finetune": "full"},
    "steer-trained": {"steer_model": "trained"},
    # App. G: the vectors at every checkpoint (every 2nd step kept; fast mode: steps 2 and 3).
    "checkpoint-series": {"checkpoint_series": True,
                          "train_overrides": {**LEARN_OVERRIDES, "checkpoint_every": 2, "keep_checkpoints": 1000}},
}  # fmt: skip


# ======================================================================================================
# Stages
# ======================================================================================================


def _eval_summary(e: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if e is None:
        return None
    keys = ("n_episodes", "mean_return", "stderr_return", "gold_per_episode", "mold_per_episode", "stderr_gold",
            "stderr_mold", "action_freq")  # fmt: skip
    return {k: e[k] for k in keys if k in e}


_INTERVENTION_ARGS = ("intervene_vector", "intervene_layer", "intervene_mode", "intervene_alpha")
"""Train Args that only matter with an intervention vector (left out of the key without one)."""
_PREFERENCE_ARGS = ("dpo_beta", "preference_horizon", "preference_rule")
"""Train Args that only DPO reads (left out of the key for the other algorithms)."""


def train_stage_settings(cfg: StudyConfig) -> dict[str, Any]:
    """The train stage's cache key: the fully resolved ``training.Args`` (preset, fast mode and
    overrides applied), so a change to a preset or to the fast settings retrains instead of reusing a
    stale run; for a shipped model, its name and sha256."""
    if cfg.trained is not None:
        shipped = find_shipped(cfg.model, cfg.trained)
        return {"shipped": shipped.name, "sha256": shipped.provenance.sha256}
    if cfg.from_run is not None:
        run, checkpoint, _ = finished_run(cfg)
        return {"from_run": str(run), "checkpoint": checkpoint.name,
                "sha256": file_sha256(checkpoint / "trainable.safetensors")}  # fmt: skip
    return _key_of_args(cfg.train_args(Path("run")))  # a warm start is in the stage's dependencies


def _key_of_args(args: Args) -> dict[str, Any]:
    """The settings of a training run that change what it trains (a stage key)."""
    settings = dataclasses.asdict(args)
    # the intervention's settings have no effect without a vector
    inert = set() if settings.get("intervene_vector") else set(_INTERVENTION_ARGS)
    if settings.get("algo") != "dpo":
        inert |= set(_PREFERENCE_ARGS)  # read by DPO only
    if settings.get("reward_model") is None:
        inert.add("reward_model")  # off: the environment's reward, as every run before the setting existed
    if settings.get("top_lr") is None:
        inert |= {
            "top_lr",
            "top_lr_layers",
        }  # one learning rate for every layer, as before the setting existed
    return {k: v for k, v in settings.items() if k not in RUN_ONLY_ARGS and k not in inert}


def warm_start_settings(cfg: StudyConfig) -> dict[str, Any]:
    """The warm start stage's cache key: its resolved ``training.Args``, and a reused run's checkpoint hash."""
    key = _key_of_args(cfg.warm_start_args(Path("run")))
    if cfg.warm_start_run is not None:
        run, checkpoint = adopted_warm_start(cfg)
        key["reused"] = {"run": str(run), "sha256": file_sha256(checkpoint / "trainable.safetensors")}
    return key


def warm_start_differences(cfg: StudyConfig, args: Args) -> list[str]:
    """How a finished run's settings ``args`` differ from the study's warm start (``setting: run vs warm start``
    per difference; empty: the run is the warm start's own training and may stand in for it)."""
    saved, wanted = (json.loads(json.dumps(_key_of_args(a), default=str))  # as config.json holds them
                     for a in (args, cfg.warm_start_args(Path(args.out))))  # fmt: skip
    if wanted.get("autocast") is None:  # the device's rule: the run recorded what it resolved to
        saved.pop("autocast", None), wanted.pop("autocast", None)
    return [f"{k}: {saved.get(k)!r} (run) vs {wanted.get(k)!r} (warm start)"
            for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]  # fmt: skip


def adopted_warm_start(cfg: StudyConfig) -> tuple[Path, Path]:
    """``cfg.warm_start_run`` resolved and its final checkpoint, checked to be the warm start's own training.

    Raises:
        ValueError: its settings differ from :meth:`StudyConfig.warm_start_args` (the message lists them) or
            it has not finished.
    """
    run = Path(str(cfg.warm_start_run)).resolve()
    try:
        args = load_run_args(run)
    except (RunDirError, ValueError) as err:
        raise ValueError(f"warm_start_run: {err}") from None
    diffs = warm_start_differences(cfg, args)
    if diffs:
        raise ValueError(f"warm_start_run {run} is not this study's warm start ({'; '.join(diffs)}); train it "
                         "with the warm start's settings, or drop warm_start_run to let the study train it")  # fmt: skip
    checkpoint = latest_checkpoint(run)
    done = int(read_json(checkpoint / "state.json")["step"]) if checkpoint is not None else 0
    if done < args.steps or not (run / "eval.json").is_file():
        raise ValueError(f"warm_start_run {run} has not finished ({done} steps); resume its training first")
    return run, checkpoint


def check_warm_start(cfg: StudyConfig) -> None:
    """The warm start and the run must evaluate alike: the run's "before" is the warm start's "after" and its
    gain over the untrained model pairs the warm start's "before" with its own "after".

    Raises:
        ValueError: a bad warm-start setting, the held-out evaluations differ (the message names the settings),
            the adapters do, or ``warm_start_run`` is not a finished run of the warm start's settings.
    """
    warm, run = validate(cfg.warm_start_args(Path("w"))), cfg.train_args(Path("r"))
    if cfg.warm_start_run is not None:
        adopted_warm_start(cfg)
    a, b = eval_settings(warm), eval_settings(run)
    diffs = []
    for k in a:
        if dataclasses.is_dataclass(a[k]) and a[k] != b[k]:  # the maze's rules: name the fields
            x, y = dataclasses.asdict(a[k]), dataclasses.asdict(b[k])
            diffs += [f"{f} {x[f]!r} vs {y[f]!r}" for f in x if x[f] != y[f]]
        elif a[k] != b[k]:
            diffs.append(k if k == "seeds" else f"{k} {a[k]!r} vs {b[k]!r}")
    if diffs:
        raise ValueError(f"the warm start and the run would be evaluated differently ({', '.join(diffs)}): set "
                         "the same values in warm_start_overrides and train_overrides")  # fmt: skip
    if warm.finetune != run.finetune:
        raise ValueError(f"the warm start fine-tunes {warm.finetune!r} and the run {run.finetune!r}; use one")


def stage_warm_start(cfg: StudyConfig, work: Path) -> dict[str, Any]:
    """The warm start's training (or the finished run that is it): its run directory and evaluations."""
    if cfg.warm_start_run is not None:
        run, _ = adopted_warm_start(cfg)
        out_dir = str(run)
    else:
        args = cfg.warm_start_args(work / "run")
        main(dataclasses.replace(args, resume=(work / "run" / "config.json").is_file()))
        run, out_dir = work / "run", "run"
    return _finished_run_record(run, out_dir, cfg.warm_start)


def _over_the_untrained(
    evals: Mapping[str, Any], warm: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A warm-started run's evaluations with "before" replaced by the untrained model's (the warm start's
    "before"), so its gain is over the untrained model; and the warm start's record (evaluations summarised)
    with the run's gain over it (``then_gain``)."""
    warm_start = {k: _eval_summary(v) if k in ("before", "after") else v for k, v in warm.items()}
    warm_start["then_gain"] = _return_gain(
        compare_evals(EvalResult(**evals["before"]), EvalResult(**evals["after"]))
    )
    return {**evals, "before": warm["before"]}, warm_start


def _finished_run_record(run: Path, out_dir: str, algo: str) -> dict[str, Any]:
    """A warm start's record: its directory (as the stage names it), algorithm, steps, held-out evaluations
    and gain over the untrained model."""
    evals = read_json(run / "eval.json")
    steps = int(read_json(latest_checkpoint(run) / "state.json")["step"])
    out = {
        "run": out_dir,
        "algo": algo,
        "steps": steps,
        "before": evals.get("before"),
        "after": evals.get("after"),
    }
    if out["before"] and out["after"]:
        out["return_gain"] = _return_gain(
            compare_evals(EvalResult(**out["before"]), EvalResult(**out["after"]))
        )
    return out


def stage_shipped(cfg: StudyConfig) -> dict[str, Any]:
    """The train stage of a study of a shipped trained model: its provenance, nothing trained."""
    shipped = find_shipped(cfg.model, str(cfg.trained))
    p = shipped.provenance
    return {"shipped": shipped.name, "sha256": p.sha256, "command": p.command, "commit": p.commit,
            "steps": p.args["steps"], "before": _eval_summary(p.before), "after": _eval_summary(p.after),
            "train_args": p.args | {"out": None}, "return_gain": _return_gain(p.gain)}  # fmt: skip


def _return_gain(gain: Mapping[str, float]) -> dict[str, Any]:
    """``training.evaluation.compare_evals``'s result as the study records it: paired when it can be."""
    paired = "stderr_diff_paired" in gain  # the same held-out mazes before and after
    se = gain["stderr_diff_paired"] if paired else gain["stderr_diff_unpaired"]
    return {"diff": gain["return_diff"], "se": se, "z": gain["return_diff"] / se if se > 0 else float("inf"),
            "paired": paired, "gold_diff": gain["gold_diff"], "mold_diff": gain["mold_diff"]}  # fmt: skip


def finished_run(cfg: StudyConfig) -> tuple[Path, Path, Args]:
    """``cfg.from_run`` resolved, its latest checkpoint and its ``Args``; checked against the study's model and tiles.

    Raises:
        training.checkpoints.RunDirError: not a training run directory.
        FileNotFoundError: no checkpoint there yet.
        ValueError: the run trained another model or tile set than the study reads out (the message names
            the ``--set`` that fixes it).
    """
    run = Path(str(cfg.from_run)).resolve()
    args = load_run_args(run)  # a clear error when it is not a training run
    checkpoint = latest_checkpoint(run)
    if checkpoint is None:
        raise FileNotFoundError(f"{run} has no checkpoint yet; finish or resume its training first")
    for name, ours in (("model", cfg.model), ("tiles", cfg.tiles)):
        if getattr(args, name) != ours:
            raise ValueError(f"{run} trained {name}={getattr(args, name)!r} but the study reads {name}={ours!r}; "
                             f"use --set {name}={getattr(args, name)} (welfare-axis run --from-run sets it)")  # fmt: skip
    return run, checkpoint, args


def stage_train(cfg: StudyConfig, work: Path, warm: StageOutput | None = None) -> dict[str, Any]:
    """The study's training run (or a shipped model's or a finished run's record). After a warm start
    (``warm``), the run starts from its weights, its "before" evaluation is the warm start's "after" (the
    same weights, mazes and random numbers, copied rather than replayed), and the gain recorded is over the
    untrained model, with the gain over the warm start beside it."""

    if cfg.trained is not None:
        return stage_shipped(cfg)
    warm_start = None
    if cfg.from_run is not None:  # a finished run: its settings and evaluations, nothing trained
        run, checkpoint, args = finished_run(cfg)
        steps = int(read_json(checkpoint / "state.json")["step"])
        evals = read_json(run / "eval.json") if (run / "eval.json").is_file() else {}
        out_dir = str(run)
        if args.init_from is not None and evals.get("before") and evals.get("after"):
            # a warm-started run (e.g. RL after SFT): its own "before" evaluates the warm start's weights
            _, warm_dir = untrained_evaluation(run, args, evals)
            warm_record = _finished_run_record(warm_dir, str(warm_dir), load_run_args(warm_dir).algo)
            evals, warm_start = _over_the_untrained(evals, warm_record)
    else:
        init_from = None if warm is None else warm.dir / warm.result["run"]
        args = cfg.train_args(work / "run", init_from=init_from)
        resume = (work / "run" / "config.json").is_file()
        if warm is not None and not resume and warm.result.get("after"):
            write_json(work / "run" / "eval.json", {"before": warm.result["after"],
                                                    "before_copied_from": f"the warm start ({init_from})"})  # fmt: skip
        steps = main(dataclasses.replace(args, resume=resume)).steps_done
        evals = read_json(work / "run" / "eval.json") if (work / "run" / "eval.json").is_file() else {}
        out_dir = "run"
        if warm is not None and evals.get("before") and evals.get("after"):
            evals, warm_start = _over_the_untrained(evals, warm.result)
    before, after = _eval_summary(evals.get("before")), _eval_summary(evals.get("after"))
    out: dict[str, Any] = {"run": out_dir, "steps": steps, "before": before, "after": after,
                           "train_args": dataclasses.asdict(args) | {"out": out_dir}}  # fmt: skip
    if before and after:
        out["return_gain"] = _return_gain(
            compare_evals(EvalResult(**evals["before"]), EvalResult(**evals["after"]))
        )
    if warm_start is not None:
        out["warm_start"] = warm_start
    if cfg.from_run is not None and (by := _study_that_trained(run)) is not None:
        out["trained_by"] = by
    return out


def _study_that_trained(run: Path) -> dict[str, Any] | None:
    """The settings of the study whose train stage ``run`` is (``<study>/stages/train/run``), or None."""
    config = run.parent.parent.parent / "study_config.json"
    if run.parts[-3:] != ("stages", "train", "run") or not config.is_file():
        return None
    return read_json(config)


def _load_models(runner: StageRunner) -> tuple[Any, Any, Any]:
    """(base model, trained model, tokenizer)."""

    train = runner.outputs["train"]
    args = Args(**train.result["train_args"])
    base, tok = load_base_model(args)
    if "shipped" in train.result:
        trained, _ = load_shipped(args.model, train.result["shipped"].split("/")[-1])
    else:
        trained, _ = load_trained(train.dir / train.result["run"], merge=True)
    return base, trained, tok


def stage_forgetting(cfg: StudyConfig, runner: StageRunner, work: Path) -> dict[str, Any]:

    base, trained, tok = _load_models(runner)
    texts = general_texts(cfg.forgetting_texts)
    out: dict[str, Any] = {}
    measured = {}
    for name, model in (("before", base), ("after", trained)):
        ppl = perplexity(model, tok, texts)
        qa = qa_accuracy(model, tok, cfg.forgetting_qa, seed=cfg.seed)
        measured[name] = (ppl, qa)
        print(f"forgetting: {name} training, perplexity {ppl.value:.3f}, QA {qa.accuracy:.2f}", flush=True)
        out[name] = {
            "perplexity": ppl.value,
            "qa_accuracy": qa.accuracy,
            "qa_stderr": qa.stderr,
            "qa_n": qa.n,
        }
    # paired over the same texts and items: bootstrap intervals of both changes, McNemar's test on QA
    out["drop"] = capability_change(measured["before"], measured["after"], seed=cfg.seed).to_dict()
    return out


def forgetting_row(drop: Mapping[str, Any]) -> dict[str, Any]:
    """The forgetting stage's paired change as one table row: each change with its 95% bootstrap interval and
    McNemar's p on QA (results recorded before the intervals existed show the changes alone)."""

    def with_ci(key: str) -> str:
        ci = drop.get(f"{key}_ci")
        return f"{drop[key]:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")

    row = {
        "perplexity increase": with_ci("perplexity_increase"),
        "QA accuracy drop": with_ci("qa_accuracy_drop"),
    }
    if "qa_mcnemar_p" in drop:
        row["QA items lost / gained"] = f"{drop['qa_lost']} / {drop['qa_gained']}"
        row["McNemar p"] = f"{drop['qa_mcnemar_p']:.3g}"
    return row


def _readout_settings(cfg: StudyConfig, out: Path | None = None, candidates: list[int] | None = None):
    """The study's ``ReportSettings`` (``candidates``: the layers ℓ* may be chosen among; None: all)."""
    if cfg.readout_scale not in ("study", "full", "fast", "smoke"):
        raise ValueError(f"readout_scale must be study, full, fast or smoke; got {cfg.readout_scale!r}")
    if cfg.readout_scale == "study":
        base = dataclasses.replace(ReportSettings(), **STUDY_READOUTS)
    elif cfg.readout_scale == "full":
        base = ReportSettings()
    else:
        base = dataclasses.replace(ReportSettings.smoke(), stories_per_emotion=4)
    if cfg.readout_scale == "fast":  # smoke sizes on the paper's 100x100 maze
        base = dataclasses.replace(base, maze_size=ReportSettings().maze_size)
    return dataclasses.replace(  # progress: each readout's time as it finishes, a bar over the extraction
        base,
        n_per_class=cfg.n_per_class,
        split_seed=cfg.seed,
        tiles=cfg.tiles,
        out=out,
        progress=True,
        layer_star_candidates=None if candidates is None else tuple(candidates),
        activation_cache=default_activation_cache_dir() if cfg.activation_cache else None,
    )


def layer_star_candidates(cfg: StudyConfig, train_args: Mapping[str, Any], n_layers: int) -> list[int] | None:
    """The layers the study lets ℓ* be chosen among (``StudyConfig.layer_star_layers``): None for all, else
    :func:`adapted_layers` of the run (None when it adapted every layer)."""
    _check_layer_star_layers(cfg)
    return adapted_layers(train_args, n_layers) if cfg.layer_star_layers == "adapted" else None


def _check_layer_star_layers(cfg: StudyConfig) -> None:
    if cfg.layer_star_layers not in ("all", "adapted"):
        raise ValueError(f"layer_star_layers must be all or adapted; got {cfg.layer_star_layers!r}")


def stage_readouts(cfg: StudyConfig, runner: StageRunner, work: Path) -> dict[str, Any]:
    """Vectors and every readout for the untrained (control u) and trained (v) model."""

    base, trained, tok = _load_models(runner)
    candidates = layer_star_candidates(
        cfg, runner.outputs["train"].result["train_args"], _layers.n_layers(base)
    )
    results = {}
    # The paper's common ground: one emotion basis, built on the maze-naive model, for both; the control
    # read at the trained model's emotion layer and also projected on the trained v; the trained model's
    # logits compared with the naive one's as an implicit reward.
    basis = report_emotion_vectors(base, tok, _readout_settings(cfg))
    results["trained"] = readout_report(
        trained,
        tok,
        _readout_settings(cfg, work / "readouts_trained.json", candidates),
        vectors_dir=work / "vectors_trained",
        emotions=basis,
        reference_model=base,
    )
    star = results["trained"].extraction.layer_star
    v = {c: ConceptVector.load(work / "vectors_trained" / c).select([star[c]]) for c in ("Gold", "Mold")}
    results["control"] = readout_report(
        base,
        tok,
        _readout_settings(cfg, work / "readouts_control.json", candidates),
        vectors_dir=work / "vectors_control",
        emotions=basis,
        emotion_layer=results["trained"].extraction.best_mean_auroc_layer,
        tracking_vectors=v,
    )
    return {"control": "readouts_control.json", "trained": "readouts_trained.json",
            "vectors": {"control": "vectors_control", "trained": "vectors_trained"},
            "layer_star": results["trained"].extraction.layer_star}  # fmt: skip


def stage_steering(cfg: StudyConfig, runner: StageRunner, work: Path) -> dict[str, Any]:
    """Dose-response sweeps of v and norm-matched u at ℓ*, one sweep per tile class."""

    base, trained, tok = _load_models(runner)
    model = base if cfg.steer_model == "base" else trained
    readouts = runner.outputs["readouts"]
    vec_dirs = readouts.result["vectors"]
    if cfg.control_layer not in ("trained", "own"):
        raise ValueError(f"control_layer must be trained or own; got {cfg.control_layer!r}")
    own_star = ReadoutReport.load(readouts.dir / readouts.result["control"]).extraction.layer_star
    out: dict[str, Any] = {"steered_model": cfg.steer_model, "control_layer": cfg.control_layer,
                           "sweeps": {}, "slopes": []}  # fmt: skip
    for concept in ("Mold", "Gold"):
        layer = int(readouts.result["layer_star"][concept])
        v = ConceptVector.load(readouts.dir / vec_dirs["trained"] / concept)
        u = ConceptVector.load(readouts.dir / vec_dirs["control"] / concept)
        settings = dict(alphas=tuple(cfg.alphas), evals=tuple(cfg.steer_evals), n_prompts=cfg.n_prompts,
                        n_samples=cfg.n_samples, seeds=(cfg.seed,), max_new_tokens=cfg.max_new_tokens)  # fmt: skip
        if cfg.control_layer == "trained":  # one sweep: u rescaled to ‖v‖ at the same layer
            plan = [(f"sweep_{concept}.jsonl", {f"v_{concept}": v, f"u_{concept}": u},
                     SweepConfig(layers=(layer,), norm_match_to=f"v_{concept}", **settings))]  # fmt: skip
            u_layer = layer
        else:  # two sweeps, each vector at its own ℓ*; β‖u‖ = α‖v‖ (paper Table 27)
            u_layer = int(own_star[concept])
            scaled = u.select([u_layer]) * (v.norms()[layer] / u.norms()[u_layer])
            plan = [
                (f"sweep_{concept}.jsonl", {f"v_{concept}": v}, SweepConfig(layers=(layer,), **settings)),
                (f"sweep_{concept}_control.jsonl", {f"u_{concept}": scaled},
                 SweepConfig(layers=(u_layer,), **settings)),
            ]  # fmt: skip
        for name, vectors, sweep_cfg in plan:
            with tqdm(desc=f"steering {', '.join(vectors)}", unit="cell") as bar:
                records = run_sweep(
                    model, tok, vectors, sweep_cfg, work / name, on_cell=lambda _: bar.update()
                )
            out["slopes"] += [dataclasses.asdict(row) for row in dose_response_slopes(records, seed=cfg.seed)]
        out["sweeps"][concept] = plan[0][0]
        if len(plan) > 1:
            out.setdefault("control_sweeps", {})[concept] = plan[1][0]
        out[f"norm_v_{concept}"] = v.norms()[layer]
        out[f"norm_u_{concept}"] = u.norms()[u_layer]
        out[f"layer_u_{concept}"] = u_layer
    return out


def series_settings(cfg: StudyConfig) -> dict[str, Any]:
    """Keyword arguments of ``welfare_axis.checkpoint_series.checkpoint_series`` for this study (its stage hash)."""
    sizes = FAST_SERIES_EMOTIONS if cfg.fast else SERIES_EMOTIONS
    n = cfg.series_n_per_class if cfg.series_n_per_class is not None else cfg.n_per_class
    return {"n_per_class": n, **sizes}


def stage_checkpoint_series(cfg: StudyConfig, runner: StageRunner, work: Path) -> dict[str, Any]:
    """The reward vectors at the base model and every kept checkpoint of the training run (App. G)."""
    from welfare_axis.checkpoint_series import checkpoint_series

    train = runner.outputs["train"]
    series = checkpoint_series(train.dir / train.result["run"], **series_settings(cfg))
    series.save(work / "checkpoint_series.json")
    return {"file": "checkpoint_series.json", "headline": series.headline()}


def checkpoint_series_section(runner: StageRunner) -> Section:
    """The report section of the checkpoint-series stage: per-checkpoint table and the cosine curves."""
    from welfare_axis.checkpoint_series import CheckpointSeries, checkpoint_series_figure
    from welfare_axis.report import Section, Table

    stage = runner.outputs["checkpoint_series"]
    series = CheckpointSeries.load(stage.dir / stage.result["file"])
    v = series.valence
    text = (
        f"v_Mold and v_Gold extracted at the untrained model (step 0) and {len(series) - 1} checkpoint(s) of the "
        f"training run, at layer {series.layer} of {series.n_layers}, from the same seeded trajectories "
        f"({series.settings['n_per_class']} per class). The valence axis is emotion PC1 of the untrained "
        f"model ({v['n_emotions']} emotions, r with the valence ratings {_fmt_num(v['r_valence'])}), held "
        "fixed for every checkpoint. The paper: " + PAPER["rotation"] + "."
    )
    if len(series) < 4:
        text += (
            "\n\nOnly a few checkpoints were kept: set train_overrides checkpoint_every / keep_checkpoints "
            "(preset checkpoint-series) for a longer series."
        )
    rows = [
        {k: (round(x, 4) if isinstance(x, float) else x) for k, x in row.items()} for row in series.rows()
    ]
    return Section(
        "Rotation during training (checkpoint series)",
        text=text,
        tables=[Table("per checkpoint", rows)],
        figures=[checkpoint_series_figure(series)],
    )


def _fmt_num(x: float | None) -> str:
    return "undefined" if x is None else f"{x:+.3f}"


# ======================================================================================================
# Summary and report
# ======================================================================================================


def _slope(slopes: list[dict[str, Any]], vector: str, eval_name: str) -> dict[str, Any] | None:
    for row in slopes:
        if row.get("vector") == vector and row.get("eval") == eval_name:
            return row
    return None


def summarize(runner: StageRunner, cfg: StudyConfig) -> StudySummary:
    """Headline numbers, trained vs control, with their intervals and nulls and the paper's values beside them."""
    out = runner.outputs
    train = out["train"].result
    rd = out["readouts"]
    ctrl = ReadoutReport.load(rd.dir / rd.result["control"])
    trn = ReadoutReport.load(rd.dir / rd.result["trained"])
    measures = readout_measures(trn, ctrl, PAPER)
    rotation = vector_rotation(
        rd.dir / rd.result["vectors"]["trained"], rd.dir / rd.result["vectors"]["control"]
    )
    for concept in ("Mold", "Gold"):  # 1: training left the vector where it was (v = u)
        star = trn.extraction.layer_star[concept]
        measures[f"cos_v_u_{concept.lower()}_at_layer_star"] = Measure(
            section="geometry", trained=round(rotation[concept][star], 6), control=None
        )
    steering = None
    if "steering" in out:
        slopes = out["steering"].result["slopes"]
        steering = {
            f"{vec}_{ev}": _slope(slopes, vec, ev)
            for vec in ("v_Mold", "u_Mold", "v_Gold", "u_Gold")
            for ev in cfg.steer_evals
        }
        steering = json.loads(json.dumps(steering))  # as summary.json holds it (lists, not tuples)
    return StudySummary(
        config=json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
        fast=cfg.fast,
        model=cfg.model,
        training=TrainingSummary.from_dict(
            {k: train.get(k) for k in ("steps", "before", "after", "return_gain", "warm_start", "trained_by")}
        ),
        measures=measures,
        layer_star=trn.extraction.layer_star,
        forgetting=out["forgetting"].result if "forgetting" in out else None,
        checkpoint_series=out["checkpoint_series"].result["headline"] if "checkpoint_series" in out else None,
        steering=steering,
        paper=PAPER,
        stage_seconds={name: round(stage.seconds, 1) for name, stage in out.items()},
        stage_peak_rss_gb={n: s.peak_rss_gb for n, s in out.items() if s.peak_rss_gb is not None},
    )


def report_sections(
    runner: StageRunner, cfg: StudyConfig, summary: StudySummary
) -> tuple[str, list, list[str]]:
    """The report's title, sections (tables and plotly figures) and notes, from the stage outputs."""
    from welfare_axis.report import Section, Table

    out = runner.outputs
    rd = out["readouts"]
    ctrl = ReadoutReport.load(rd.dir / rd.result["control"])
    trn = ReadoutReport.load(rd.dir / rd.result["trained"])
    train = out["train"]
    run_dir = train.dir / train.result["run"] if "run" in train.result else None
    metrics_path = run_dir / "metrics.jsonl" if run_dir is not None else None
    metrics = (
        [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
        if metrics_path is not None and metrics_path.is_file()
        else []
    )
    figs = {
        "trained": load_figures(rd.dir / rd.result["trained"]),
        "control": load_figures(rd.dir / rd.result["control"]),
    }

    def readout_figures(*wanted: tuple[str, str]) -> list:
        """The readout stage's figures (model, name), titled by model; those a run did not write are skipped."""
        chosen = []
        for model, name in wanted:
            if name in figs[model]:
                fig = figs[model][name]
                chosen.append(fig.update_layout(title=f"{model}: {fig.layout.title.text or name}"))
        return chosen

    def rows(section: str) -> list[dict[str, Any]]:
        def shown(value: Any, estimate: Estimate | None) -> Any:
            return estimate.text() if estimate is not None else value

        return [{"measure": name, "trained": shown(m.trained, m.trained_estimate),
                 "control": shown(m.control, m.control_estimate),
                 "paper trained": m.paper_trained, "paper control": m.paper_control}
                for name, m in summary.section(section).items()]  # fmt: skip

    def eval_row(when: str, e: Mapping[str, Any]) -> dict[str, Any]:
        freq = e.get("action_freq") or {}
        return {"when": when, **{k: v for k, v in e.items() if k != "action_freq"},
                "actions N/E/S/W": " / ".join(f"{freq.get(a, 0):.2f}" for a in "NESW")}  # fmt: skip

    t = summary.training.to_dict()
    algo = train.result.get("train_args", {}).get("algo", cfg.algo)
    sections = [
        Section(
            "Training",
            text=(
                (
                    f"Shipped trained model {train.result['shipped']} ({train.result['command']}; commit "
                    f"{train.result['commit'][:10]}); its held-out evaluation is the one recorded with it. "
                    if "shipped" in train.result
                    else ""
                )
                + (
                    f"RL after a warm start: {w['algo']} ({w['steps']} steps), then {algo} from its weights. "
                    if (w := t.get("warm_start"))
                    else ""
                )
                + f"{algo} on {cfg.model}, {t['steps']} steps. Held-out return before → after: "
                + (
                    f"{t['before']['mean_return']:+.2f} ± {t['before']['stderr_return']:.2f} → "
                    f"{t['after']['mean_return']:+.2f} ± {t['after']['stderr_return']:.2f}"
                    if t.get("before") and t.get("after")
                    else "not evaluated"
                )
                + (
                    f"; gain {g['diff']:+.2f} ± {g['se']:.2f} ({'paired by maze' if g.get('paired') else 'unpaired'}"
                    f" z {g['z']:.1f}; Gold {g['gold_diff']:+.2f}, Mold {g['mold_diff']:+.2f} per episode)."
                    if (g := t.get("return_gain")) and g.get("gold_diff") is not None
                    else "."
                )
                + (
                    f" Of it, the warm start gained {g1['diff']:+.2f} ± {g1['se']:.2f} (z {g1['z']:.1f}) and {algo} "
                    f"after it {g2['diff']:+.2f} ± {g2['se']:.2f} (z {g2['z']:.1f}), each paired by maze."
                    if (w := t.get("warm_start")) and (g1 := w.get("return_gain")) and (g2 := w.get("then_gain"))
                    else ""
                )
            ),  # fmt: skip
            tables=[
                Table(
                    "held-out evaluation",
                    [{"when": k, **(t[k] or {})} for k in ("before", "after") if t.get(k)]
                    if not (w := t.get("warm_start")) or not w.get("after")
                    else [{"when": "before (untrained)", **(t["before"] or {})},
                          {"when": f"after the {w['algo']} warm start", **w["after"]},
                          {"when": f"after {algo}", **(t["after"] or {})}],
                )  # fmt: skip
            ],
            figures=([training_curves(metrics)] if metrics else [])
            + (axis_view(run_dir) if run_dir else [])
            + (maze_view(run_dir) if run_dir else []),
        ),
        Section(
            "Geometry of the reward vectors",
            text="Per-layer cos(v_Mold, v_Gold) for the trained model (v) and the untrained control (u); and "
            "cos(v, u) per layer: where it is 1, training did not move the vector and v and u cannot differ "
            "in any readout there (below the adapted layers it is 1 by construction).",
            tables=[Table("headline", rows("geometry"))],
            figures=[
                layer_cosine_curves(
                    {
                        "trained v": dict(enumerate(trn.geometry.cos_mold_gold.by_layer)),
                        "control u": dict(enumerate(ctrl.geometry.cos_mold_gold.by_layer)),
                    }
                ),
                layer_cosine_curves(
                    vector_rotation(rd.dir / rd.result["vectors"]["trained"], rd.dir / rd.result["vectors"]["control"]),
                    title="cos(v, u) per layer: how far training moved each vector",
                ),
            ] + readout_figures(("trained", "centred_geometry"), ("control", "centred_geometry")),
        ),  # fmt: skip
        Section(
            "Logit lens",
            tables=[Table("top / bottom tokens and failure-token AUROC", rows("logit_lens"))],
            figures=readout_figures(("trained", "logit_lens_mold"), ("trained", "logit_lens_gold")),
        ),
        Section("Emotion alignment", tables=[Table("scatter slope and r", rows("emotions"))],
                figures=readout_figures(("trained", "emotion_scatter"), ("control", "emotion_scatter"))),
        Section("Tracking", tables=[Table("Cohen's d", rows("tracking"))],
                figures=[layer_cosine_curves(
                    {"trained v_Gold": dict(enumerate(trn.tracking.maze_d_gold_vector_by_layer)),
                     "control u_Gold": dict(enumerate(ctrl.tracking.maze_d_gold_vector_by_layer))},
                    title="maze tracking: Cohen's d of Gold-final vs Mold-final projections, by layer",
                    y_title="Cohen's d", y_range=None)]),
        Section("Logits as Q-values", tables=[Table("Spearman(Q̂, true Q)", rows("q_readout"))],
                figures=readout_figures(("trained", "q_scatter"))),
        Section("Environment probes", tables=[Table("best-layer probe score", rows("env_probes"))],
                figures=readout_figures(("trained", "probe_accuracy"))),
    ]  # fmt: skip
    if summary.forgetting is not None:
        f = summary.forgetting
        sections.append(Section("Forgetting", tables=[
            Table("non-target capability", [{"when": k, **f[k]} for k in ("before", "after")]),
            Table("change after training (paired over the same texts and items)", [forgetting_row(f["drop"])])]))  # fmt: skip
    if "steering" in out:
        st = out["steering"]
        figures = []
        for concept, name in st.result["sweeps"].items():
            records = load_records(st.dir / name)
            control = st.result.get("control_sweeps", {}).get(concept)
            if control:
                records = records + load_records(st.dir / control)
            figures.append(
                dose_response_figure(
                    summarize_cells(records), title=f"steering with v_{concept} vs norm-matched u_{concept}"
                )
            )
        slope_rows = [{k: r.get(k) for k in ("vector", "eval", "layer", "slope", "se", "ci_low", "ci_high", "n")}
                      for r in st.result["slopes"]]  # fmt: skip
        reliability = steering_reliability(st.dir, st.result)
        consistency = [
            {"vector": f"{name}_{c}", "consistency at ℓ*": x}
            for name, report in (("v", trn), ("u", ctrl))
            for c, x in (report.extraction.consistency_at_layer_star or {}).items()
        ]
        sections.append(
            Section(
                "Steering",
                text=f"Steered model: {cfg.steer_model}. Control u is norm-matched to v"
                + (
                    " at v's ℓ*." if cfg.control_layer == "trained" else ", each at its own ℓ* (β‖u‖ = α‖v‖)."
                ),
                tables=[
                    Table("dose-response slopes (OLS, bootstrap CI)", slope_rows),
                    Table(
                        "reliability: per-prompt slopes (anti-steerable share with a 95% Wilson interval; u is "
                        "expected to move as its v does), R² of α, incoherence by α",
                        [r.row() for r in reliability],
                    ),
                    Table(
                        "consistency predictor: mean pairwise cosine of the matched-triplet differences",
                        consistency,
                    ),  # fmt: skip
                ],
                figures=figures,
            )
        )
    if "checkpoint_series" in out:
        sections.append(checkpoint_series_section(runner))
    notes = (
        [
            "FAST MODE: a pipeline check. Its 3 short training steps do not teach the maze and its readouts use a "
            "few trajectories per class: the numbers test the code, not the paper."
        ]
        if cfg.trains_pipeline_check
        else [
            f"FAST MODE: the {'shipped ' if cfg.trained else ''}trained model read out with a few trajectories per "
            "class and small steering cells: a quick look, not a measurement."
        ]
        if cfg.fast
        else []
    )
    if not cfg.trains_pipeline_check:  # a pipeline check's note above says its training does not teach
        notes += learning_notes(summary.training, summary.forgetting)
    frozen = frozen_layers_note(train.result.get("train_args", {}), trn.n_layers, trn.extraction.layer_star)
    if frozen:
        notes.append(frozen)
    candidates = trn.settings.get("layer_star_candidates")
    if candidates:
        lo, hi = min(candidates), max(candidates)
        notes.append(
            f"ℓ* was chosen among the adapted layers {f'L{lo}' if lo == hi else f'L{lo}-{hi}'} only "
            "(layer_star_layers=adapted), for v and u alike; the paper's rule chooses among every layer."
        )
    return f"welfare-axis study: {cfg.model}, {algo}, tiles {cfg.tiles}", sections, notes


def steering_reliability(stage_dir: Path, result: Mapping[str, Any]) -> list[Reliability]:
    """The reliability of every steering effect of the steering stage (``steering.reliability``); the control
    u_X is expected to move in the direction its v_X moves (per eval), so its anti-steerable share is comparable."""
    files = list(result["sweeps"].values()) + list(result.get("control_sweeps", {}).values())
    records = [r for name in files for r in load_records(stage_dir / name)]
    vectors = {str(r["vector"]) for r in records if str(r["vector"]).startswith("v_")}
    return reliability_table(records, sign_from={"u_" + v.removeprefix("v_"): v for v in vectors})


def vector_rotation(trained_dir: Path, control_dir: Path) -> dict[str, dict[int, float]]:
    """``{"Mold": {layer: cos(v, u)}, "Gold": ...}`` from the vectors a readouts stage saved."""
    return {
        concept: ConceptVector.load(trained_dir / concept).cosine(ConceptVector.load(control_dir / concept))
        for concept in ("Mold", "Gold")
    }


def axis_view(run_dir: Path) -> list:
    """Training and the reward axis on one time axis, for runs trained with the axis monitor."""
    if not (run_dir / MONITOR_FILE).is_file():
        return []
    return [axis_monitor_figure(*axis_records(run_dir), title="training and the reward axis (axis monitor)")]


def maze_view(run_dir: Path) -> list:
    """The trained model's first held-out evaluation episode drawn over its maze (runs that logged it)."""

    log = run_dir / "episodes" / "eval_after.safetensors"
    if not log.is_file():
        return []
    batch = load_episodes(log)
    return [episode_figure(batch, 0, title=f"trained model, held-out maze {batch.seeds[0]}: "
                                            f"return {float(batch.rewards[0].sum()):+.1f}")]  # fmt: skip


def adapted_layers(train_args: Mapping[str, Any], n_layers: int) -> list[int] | None:
    """The layers a training run changed: the top ``lora_layers`` with LoRA on the top layers, None when it
    changed every layer (LoRA on all layers, or full fine-tuning).

    Example:
        >>> adapted_layers({"finetune": "lora", "lora_layers": 8}, 30)
        [22, 23, 24, 25, 26, 27, 28, 29]
    """
    k = train_args.get("lora_layers")
    if train_args.get("finetune") != "lora" or not k or int(k) >= n_layers:
        return None
    return list(range(n_layers - int(k), n_layers))


LEARNED_Z = 3.0
"""A trained model learned the maze when its held-out gain over the untrained model is at least this many paired
standard errors, with Gold up and Mold down per episode (issue 17's criterion)."""
DAMAGED_PERPLEXITY_RATIO = 2.0
"""Training damaged the language model when perplexity on the general texts at least doubles."""


def learning_notes(training: TrainingSummary, forgetting: Mapping[str, Any] | None = None) -> list[str]:
    """Warnings when the trained model did not learn the maze (:data:`LEARNED_Z`), or training broke its
    language modelling (:data:`DAMAGED_PERPLEXITY_RATIO`): its readouts then say nothing about a model that learned.

    Example:
        >>> from welfare_axis.summary import ReturnGain
        >>> gain = ReturnGain(diff=-33.9, se=6.55, z=-5.17, paired=True, gold_diff=-0.62, mold_diff=2.14)
        >>> learning_notes(TrainingSummary(steps=4, return_gain=gain))[0].split(":")[0]
        'The trained model did not learn the maze; it got worse'
    """
    notes = []
    gain = training.return_gain
    if gain is not None:
        gold_up = gain.gold_diff is None or gain.gold_diff > 0  # unknown (an older record): judged by z alone
        mold_down = gain.mold_diff is None or gain.mold_diff < 0
        learned = gain.z >= LEARNED_Z and gold_up and mold_down
        if not learned:
            worse = "; it got worse" if gain.z <= -LEARNED_Z else ""
            per_episode = (
                f"; Gold {gain.gold_diff:+.2f}, Mold {gain.mold_diff:+.2f} per episode"
                if gain.gold_diff is not None and gain.mold_diff is not None
                else ""
            )
            notes.append(
                f"The trained model did not learn the maze{worse}: held-out gain {gain.diff:+.1f} ± {gain.se:.1f} "
                f"({'paired ' if gain.paired else ''}z {gain.z:.1f}{per_episode}), short of {LEARNED_Z:g} SE with Gold "
                "up and Mold down. Its readouts and steering say nothing about the welfare axis of a model that "
                "learned; read them as another control."
            )
    if forgetting and forgetting.get("before") and forgetting.get("after"):
        before, after = forgetting["before"].get("perplexity"), forgetting["after"].get("perplexity")
        if before and after and after >= DAMAGED_PERPLEXITY_RATIO * before:
            notes.append(
                f"Training damaged the language model: perplexity on the general texts {before:.1f} → {after:.1f} "
                f"({after / before:.0f}×). Its vectors are directions of a broken model; a smaller step "
                "(train_overrides lr, top_lr) or another recipe is needed."
            )
    return notes


def frozen_layers_note(
    train_args: Mapping[str, Any], n_layers: int, layer_star: Mapping[str, int]
) -> str | None:
    """A warning when LoRA adapted only the top layers and a selected layer lies below them.

    Below the lowest adapted layer the trained model computes exactly what the untrained one does, so
    v equals u there: readouts and steering at those layers cannot differ between trained and control.

    Example:
        >>> frozen_layers_note({"finetune": "lora", "lora_layers": 8}, 30, {"Mold": 21, "Gold": 19}).split(":")[0]
        'LoRA adapted only layers 22-29'
    """
    adapted = adapted_layers(train_args, n_layers)
    if adapted is None:
        return None
    lowest = adapted[0]
    below = {c: layer for c, layer in layer_star.items() if layer < lowest}
    if not below:
        return None
    chosen = ", ".join(f"{c} L{layer}" for c, layer in sorted(below.items()))
    return (
        f"LoRA adapted only layers {lowest}-{n_layers - 1}: v equals u at every layer below {lowest}, "
        f"including the selected layers ({chosen}), so readouts and steering there cannot differ between "
        "trained and control. Train with train_overrides={'lora_layers': None} to adapt every layer."
    )


# ======================================================================================================
# Driver
# ======================================================================================================


def run_study(cfg: StudyConfig, out: str | Path) -> StudySummary:
    """Run (or resume) every stage of the study into ``out``; returns the summary."""
    if cfg.trained is not None and cfg.checkpoint_series:
        raise ValueError(
            "a shipped trained model has no checkpoints: drop checkpoint_series or train (no --trained)"
        )
    if cfg.trained is not None and cfg.from_run is not None:
        raise ValueError(
            "trained (a shipped model) and from_run (a training run) both name the model; give one"
        )
    if cfg.trained is not None:
        find_shipped(cfg.model, cfg.trained)  # a clear error before any stage runs
    if cfg.from_run is not None:
        finished_run(cfg)  # the same for a training run
    if cfg.warm_start is not None and (cfg.trained is not None or cfg.from_run is not None):
        raise ValueError("warm_start trains the study's model first; a shipped model or a finished run has "
                         "none: drop warm_start or trained/from_run")  # fmt: skip
    if cfg.warm_start_run is not None and cfg.warm_start is None:
        raise ValueError(
            "warm_start_run reuses a warm start, but warm_start is not set (e.g. --preset sft-grpo)"
        )
    if cfg.trained is None and cfg.from_run is None:  # a bad setting fails before the run directory is made
        validate(cfg.train_args(Path(out) / "run"))
    if cfg.warm_start is not None:
        check_warm_start(cfg)
    _check_layer_star_layers(cfg)
    runner = StageRunner(out)
    write_json(Path(out) / "study_config.json", dataclasses.asdict(cfg))
    stages: list[tuple[str, Callable[[Path], dict[str, Any]], list[str], bool]] = [
        (
            "train",
            lambda d: stage_train(cfg, d, runner.outputs.get("warm_start")),
            ["warm_start"] if cfg.warm_start else [],
            True,
        ),
        ("forgetting", lambda d: stage_forgetting(cfg, runner, d), ["train"], False),
        ("readouts", lambda d: stage_readouts(cfg, runner, d), ["train"], False),
        ("steering", lambda d: stage_steering(cfg, runner, d), ["train", "readouts"], False),
    ]
    if cfg.warm_start:  # first: the run the training starts from (the other stages' keys are unchanged)
        stages.insert(0, ("warm_start", lambda d: stage_warm_start(cfg, d), [], True))
    if cfg.checkpoint_series:  # a control: off by default (the other stages and their keys are unchanged)
        stages.append(
            ("checkpoint_series", lambda d: stage_checkpoint_series(cfg, runner, d), ["train"], False)
        )
    settings = {
        "warm_start": warm_start_settings(cfg) if cfg.warm_start else {},
        "train": train_stage_settings(cfg),
        "forgetting": {"qa": cfg.forgetting_qa, "texts": cfg.forgetting_texts, "seed": cfg.seed},
        "readouts": {"n_per_class": cfg.n_per_class, "scale": cfg.readout_scale, "seed": cfg.seed}
        | ({"layer_star_layers": cfg.layer_star_layers} if cfg.layer_star_layers != "all" else {}),
        "steering": {k: getattr(cfg, k) for k in ("steer_model", "steer_evals", "alphas", "n_prompts", "n_samples", "max_new_tokens", "seed", "control_layer")},
        "checkpoint_series": series_settings(cfg),
    }  # fmt: skip
    for name, fn, depends, resumable in stages:
        start = time.perf_counter()
        print(f"[welfare-axis] stage {name} ...", flush=True)
        result = runner.stage(name, settings[name], fn, depends=depends, resumable=resumable)
        how = "cached" if result.cached else f"{time.perf_counter() - start:.0f} s"
        print(f"[welfare-axis] stage {name} done ({how})", flush=True)
    summary = summarize(runner, cfg)
    write_json(Path(out) / "summary.json", summary.to_dict())
    title, sections, notes = report_sections(runner, cfg, summary)
    pngs, skipped = export_figures(sections, Path(out) / "figures")
    if skipped:
        print(f"[welfare-axis] {skipped}", flush=True)
        notes = [*notes, skipped]
    write_text(Path(out) / "report.html", render_report(title, sections, notes=notes))
    print(
        f"[welfare-axis] report: {Path(out) / 'report.html'} ({len(pngs)} PNG figures in figures/)",
        flush=True,
    )
    return summary
