"""The trainer at the paper's scale on a GPU: rollouts, training steps, MFU, memory, TRL, and the 4B run's cost.

(Over 600 lines: one self-contained script is what a device run can carry and rerun in one call; it holds
the model shapes, the FLOP count, the projection and the time budget that the device run needs together.)

Models are built from their configs with random weights (no download: nothing can reach the device
machine but the working tree). Speed does not depend on the weights' values, so a random model of a
config runs exactly as fast as the trained one. Token ids only need to be valid for every vocabulary:
the Llama and Qwen3 shapes use the bundled SmolLM2 tokenizer (ids < 49,152 < every vocabulary here),
the Gemma shape Gemma's own (``--tokenizer smollm2`` uses SmolLM2's for all, e.g. to carry 3 MB
instead of 35 MB to a device). Which tokenizer is used changes the episodes' lengths, not the speed
per token.

``MODEL_CONFIGS`` (the shapes of the real checkpoints; each states its source):
    smollm2-135m   SmolLM2-135M-Instruct (Llama): 30 layers, d 576, ~135 M parameters
    gemma3-270m    Gemma-3-270M (Gemma 3 text): 18 layers, d 640, sliding window 512, ~268 M
    qwen3-4b       Qwen3-4B-Instruct-2507 (Qwen3, the paper's primary base): 36 layers, d 2560, ~4.02 B
``--tiny`` shrinks each to 2 layers of width 64 for the CPU tests, keeping the family, the vocabulary,
tied embeddings, Qwen3's decoupled head dimension and Gemma's sliding-window layers (window 64).

Per model config, in one run, against baselines measured in the same run (medians of ``--reps``):

(a) Rollouts. ``training.rollout.collect_episodes`` (KV cache reused across turns, only new tokens
    fed, direction logits masked at the last position) plays the plan's episodes (GRPO groups of
    ``train_episodes`` sharing a maze) for ``--turns`` turns, against plain per-turn ``generate``: every
    turn every conversation is re-rendered in full and ``generate(max_new_tokens=1)`` runs over it
    (batched, left padding, same sampling settings, no cache reuse), replaying the rollout's own
    conversations. Both run the policy as trained (the base with its unmerged LoRA adapters) in the
    run's precision; throughput is the episodes' real tokens over wall time (CUDA synchronised).
(b) Training steps. ``training.train_step`` for (dr_grpo, tbrm) x (LoRA r=32/alpha=64 on every linear
    layer of every decoder layer, full fine-tuning), the paper's Args otherwise, one update epoch and
    one minibatch (one optimizer step per batch), AdamW, micro-batch ``--micro-batch``, on the
    rollout's first GRPO group. Each configuration gets a fresh model. Precision is the project's rule
    (``probes.models.resolve_autocast``): float32 weights under bfloat16 autocast on CUDA, float32 on
    CPU unless ``--autocast``. Tokens/s is the batch's real tokens over the step's wall time.
(c) TRL's ``GRPOTrainer`` (for dr_grpo + LoRA) on the same model and adapter, batch, micro-batch,
    loss (``dr_grpo``, beta=0), precision, no gradient checkpointing and sequence lengths, its steps
    interleaved with ours, generation excluded with TRL's own profiling hooks, exactly as
    ``bench.trainer`` does on CPU (its prompt is one of our episodes up to the final assistant header,
    and it generates ``--turns`` tokens). Skipped with a note when trl or datasets is not installed.
MFU: the step's model FLOPs per second over the matmul peak of the dtype it runs in (bfloat16 under
    autocast, else float32), measured in this run (8192² on CUDA, 512² on CPU; before and after the
    steps, the larger used). FLOPs are counted layer by layer (``step_flops``):
      forward     2·P·T per layer (P: linear weights of a decoder layer, T: tokens) + attention
                  4·pairs·q (QKᵀ and AV over the causal pairs, pairs = Σ T_seq²/2, or W·T − W²/2 in a
                  sliding-window layer; q = heads·head_dim) + the output head at the decisions only
                  (2·d·V per decision);
      LoRA        backward with input gradients only through the adapted layers (2·P·T + 8·pairs·q per
                  layer, + 2·d·V per decision) and 6·(LoRA parameters)·T for the adapters;
      full FT     backward with input and weight gradients through every layer (4·P·T + 8·pairs·q per
                  layer, + 4·d·V per decision): three forwards, the usual 6·N·T;
      TBRM        one more forward of the reference policy (adapter off / the frozen copy).
Memory: peak GPU memory per measurement (``torch.cuda.max_memory_allocated``, reset before each); on
    CPU the process's peak RSS so far instead (it only grows).
Projection: from qwen3-4b's rollout tokens/s and dr_grpo+LoRA training tokens/s, the paper's primary
    run (Dr. GRPO, 8 prompts x group 64 = 512 episodes of ~1024 tokens per step, one update epoch with
    one minibatch, rollouts by our sampler, no reference pass (kappa unstated, 0 here), no evaluation
    or checkpoint time) costs steps x (512·1024/rollout_tps + 512·1024/train_tps) seconds: given for
    the reported checkpoint (step 95) and the schedule's length (S = 500), beside the paper's ~20 h on
    1xH200 (``project_hours``). Our rollout is measured at a smaller batch than 512, so the projection
    errs long. On a CPU with ``--tiny`` the same arithmetic runs as a code-path check only: not a
    number to quote.

Budget: ``--minutes`` (default 8). Before each measurement the run estimates its time (from the last
one of its kind) and skips it with a printed note when the budget would run out; the JSON and BENCH
lines are rewritten after every measurement, so a run stopped early still leaves its results.
Outputs in ``--out`` (default ``$OUT``, else runs/bench_gpu): ``gpu_bench.json`` and ``bench.txt``.

Ends with the BENCH lines of shared/BENCH.md, one set per model config:
    BENCH gpu_rollout_vs_generate[<model>] <ratio> >=3
    BENCH gpu_train_vs_trl[<model>] <ratio> >=1.5
    BENCH gpu_train_mfu[<model>] <fraction> >=0.4      (dr_grpo + LoRA, the paper's primary run)
    BENCH gpu_projected_hours <hours for 95 steps> report

Device run (full sizes, CUDA, <= 8 minutes). The device has no network and no bundled weights
packages, so carry the tokenizers. Its image lacked trl, datasets, gymnasium and transformers >= 5.24
when last read; carry those as wheels (without trl and datasets the TRL baseline is skipped):
    here, once:   .venv/bin/python -m bench.gpu --export-tokenizers .cache/bench_gpu
    on device:    WELFARE_AXIS_CACHE=.cache/bench_gpu PYTHONUNBUFFERED=1 python3 -m bench.gpu --out $OUT
                  (carry .cache/bench_gpu; add --tokenizer smollm2 to export/carry SmolLM2's only)
CPU smoke run of the code paths (seconds): python -m bench.gpu --tiny --device cpu --skip-trl
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: drop bench/ from sys.path so it cannot shadow the maze_env package
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import argparse
import dataclasses
import gc
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bench.trainer import naive_rollout_seconds, sync
from maze_env import MazeConfig
from probes.models import resolve_autocast
from probes.resources import peak_rss_gb
from training.rollout import EpisodeBatch, collect_episodes

TARGETS = {"gpu_rollout_vs_generate": ">=3", "gpu_train_vs_trl": ">=1.5", "gpu_train_mfu": ">=0.4"}
TRAIN_CONFIGS: tuple[tuple[str, str], ...] = (
    ("dr_grpo", "lora"),
    ("dr_grpo", "full"),
    ("tbrm", "lora"),
    ("tbrm", "full"),
)
"""(algo, finetune) of every training measurement; the first is the paper's primary run's."""
PRIMARY = "dr_grpo/lora"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ====================================================================================================
# Model configs
# ====================================================================================================

_GEMMA3_270M_LAYERS = (["sliding_attention"] * 5 + ["full_attention"]) * 3


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model config to benchmark: its transformers classes, the real checkpoint's dimensions, and the
    overrides of ``--tiny`` (a few layers and small widths, same family)."""

    name: str
    config_class: str
    model_class: str
    fields: dict[str, Any]
    tiny: dict[str, Any]
    tokenizer: str
    """The bundled tokenizer whose ids feed it (``probes.models.load_tokenizer`` name)."""
    params: float
    """Parameter count of the real checkpoint (tied embeddings counted once)."""
    source: str


MODEL_CONFIGS: dict[str, ModelSpec] = {
    "qwen3-4b": ModelSpec(
        name="qwen3-4b",
        config_class="Qwen3Config",
        model_class="Qwen3ForCausalLM",
        # Qwen/Qwen3-4B-Instruct-2507 config.json (the paper's primary base). Qwen3-4B (April 2025)
        # differs only in rope_theta 1e6 and max_position_embeddings 40960, neither of which changes speed.
        fields={
            "hidden_size": 2560,
            "intermediate_size": 9728,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 151936,
            "tie_word_embeddings": True,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 262144,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0},
            "attention_bias": False,
        },
        # query width 4·32 = 128 ≠ d = 64: decoupled from d as in Qwen3 (32·128 = 4096 ≠ 2560)
        tiny={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
        },
        tokenizer="smollm2-135m-instruct",
        params=4.02e9,
        source="Qwen/Qwen3-4B-Instruct-2507 config.json",
    ),
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        config_class="LlamaConfig",
        model_class="LlamaForCausalLM",
        # HuggingFaceTB/SmolLM2-135M-Instruct config.json (equal to the bundled GGUF's converted config)
        fields={
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "head_dim": 64,
            "vocab_size": 49152,
            "tie_word_embeddings": True,
            "rms_norm_eps": 1e-5,
            "max_position_embeddings": 8192,
            "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
        },
        tiny={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
        },
        tokenizer="smollm2-135m-instruct",
        params=134.5e6,
        source="HuggingFaceTB/SmolLM2-135M-Instruct config.json",
    ),
    "gemma3-270m": ModelSpec(
        name="gemma3-270m",
        config_class="Gemma3TextConfig",
        model_class="Gemma3ForCausalLM",
        # google/gemma-3-270m config.json (equal to the bundled GGUF's converted config); rope thetas are
        # Gemma3TextConfig's defaults (1e6 global, 1e4 local), as in the checkpoint
        fields={
            "hidden_size": 640,
            "intermediate_size": 2048,
            "num_hidden_layers": 18,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 256,
            "query_pre_attn_scalar": 256,
            "vocab_size": 262144,
            "tie_word_embeddings": True,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 32768,
            "sliding_window": 512,
            "layer_types": list(_GEMMA3_270M_LAYERS),
        },
        tiny={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "query_pre_attn_scalar": 32,
            "sliding_window": 64,  # shorter than a tiny episode, so the window is exercised
            "layer_types": ["sliding_attention", "full_attention"],
        },
        tokenizer="gemma3-270m",
        params=268.1e6,
        source="google/gemma-3-270m config.json",
    ),
}
"""The benchmark's model configs (random weights, built from these dimensions)."""


def model_config(name: str, *, tiny: bool = False, tokenizer: Any = None):
    """The transformers config of ``MODEL_CONFIGS[name]`` (``tiny``: its small variant); with a
    tokenizer, its bos/eos/pad ids."""
    import transformers

    spec = MODEL_CONFIGS[name]
    fields = {**spec.fields, **(spec.tiny if tiny else {})}
    if tokenizer is not None:
        fields.update(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    config = getattr(transformers, spec.config_class)(**fields, architectures=[spec.model_class])
    config.welfare_axis_name = f"bench-{name}{'-tiny' if tiny else ''}"
    return config


def build_model(
    name: str, *, tiny: bool = False, device: str | torch.device = "cpu", tokenizer: Any = None, seed: int = 0
):
    """A randomly initialised float32 model of ``MODEL_CONFIGS[name]``, created directly on ``device``
    (``"meta"``: shapes only, nothing allocated). Eval mode."""
    import transformers

    config = model_config(name, tiny=tiny, tokenizer=tokenizer)
    torch.manual_seed(seed)
    with torch.device(device):
        model = getattr(transformers, MODEL_CONFIGS[name].model_class)(config)
    if tokenizer is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def parameter_count(model: torch.nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


def bench_tokenizer(name: str, choice: str = "auto"):
    """The tokenizer feeding ``MODEL_CONFIGS[name]``: its spec's (``auto``) or SmolLM2's (``smollm2``)."""
    from probes.models import load_tokenizer

    return load_tokenizer(MODEL_CONFIGS[name].tokenizer if choice == "auto" else "smollm2-135m-instruct")


def export_tokenizers(dest: str | os.PathLike[str], names: Sequence[str]) -> list[Path]:
    """Write the bundled tokenizers ``names`` as a models cache under ``dest`` (``dest/models/<name>.tokenizer``,
    with the completion marker), so a machine without the weights packages finds them with
    ``WELFARE_AXIS_CACHE=dest``."""
    from probes.models import _MARKER_FILE, load_tokenizer

    written = []
    for name in dict.fromkeys(names):
        target = Path(dest) / "models" / f"{name}.tokenizer"
        target.mkdir(parents=True, exist_ok=True)
        load_tokenizer(name).save_pretrained(target)
        (target / _MARKER_FILE).write_text(json.dumps({"exported_by": "bench.gpu", "name": name}) + "\n")
        written.append(target)
    return written


# ====================================================================================================
# Device helpers: synchronisation, memory, matmul peak
# ====================================================================================================


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory since the last :func:`reset_peak` (CUDA), else the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return peak_rss_gb()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def matmul_peak_tflops(dtype: torch.dtype, device: torch.device, n: int, reps: int = 10) -> float:
    """Median TFLOP/s of an ``n × n`` matmul in ``dtype`` on ``device`` (2·n³ FLOPs; synchronised)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(3):  # warm-up (cuBLAS heuristics, clocks)
        a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e12


def measure_peaks(device: torch.device, bf16: bool) -> dict[str, float]:
    """Matmul peaks (TFLOP/s) of float32 and, when used or on CUDA, bfloat16."""
    if device.type == "cuda":
        return {
            "float32": matmul_peak_tflops(torch.float32, device, 4096),
            "bfloat16": matmul_peak_tflops(torch.bfloat16, device, 8192),
        }
    peaks = {"float32": matmul_peak_tflops(torch.float32, device, 512, reps=5)}
    if bf16:  # without native bf16 a large bf16 matmul takes seconds: only when it is used
        peaks["bfloat16"] = matmul_peak_tflops(torch.bfloat16, device, 512, reps=3)
    return peaks


# ====================================================================================================
# FLOPs of a training step
# ====================================================================================================


def attention_pairs(lengths: Sequence[int], window: int | None = None) -> float:
    """Useful causal (query, key) pairs of sequences of ``lengths``: T²/2 each, or W·T − W²/2 past a
    sliding window W (the continuous count ``bench.trainer`` uses)."""
    total = 0.0
    for t in lengths:
        t = float(t)
        total += t * t / 2 if window is None or t <= window else window * t - window * window / 2
    return total


def step_flops(
    *,
    linear_params_per_layer: int,
    n_layers: int,
    hidden: int,
    q_dim: int,
    vocab: int,
    tokens: float,
    attn_pairs: Sequence[float],
    decisions: int,
    finetune: str,
    grad_layers: int | None = None,
    lora_params: int = 0,
    reference_forward: bool = False,
) -> dict[str, float]:
    """Model FLOPs of one training step (see the module docstring).

    Args:
        linear_params_per_layer: P, the linear weights of one decoder layer (LoRA excluded).
        attn_pairs: causal pairs summed over the batch's sequences, one entry per layer (bottom first).
        decisions: positions where the output head is applied (episodes × turns).
        finetune: ``"lora"`` (input gradients through the top ``grad_layers`` layers, frozen head) or
            ``"full"`` (input and weight gradients through every layer and the head).
        grad_layers: layers the backward runs through (LoRA: from the top down to the lowest adapted one).
        lora_params: trainable LoRA parameters (6 FLOPs each per token: forward, input and weight grads).
        reference_forward: one more forward of the reference policy (TBRM).
    """
    if len(attn_pairs) != n_layers:
        raise ValueError(f"attn_pairs has {len(attn_pairs)} entries for {n_layers} layers")
    if finetune not in ("lora", "full"):
        raise ValueError(f"finetune must be 'lora' or 'full'; got {finetune!r}")
    head = 2 * hidden * vocab * decisions
    forward = 2 * linear_params_per_layer * tokens * n_layers + 4 * sum(attn_pairs) * q_dim + head
    if finetune == "full":
        grad_layers = n_layers
        backward = 4 * linear_params_per_layer * tokens * n_layers + 8 * sum(attn_pairs) * q_dim + 2 * head
        lora = 0.0
    else:
        grad_layers = n_layers if grad_layers is None else grad_layers
        top = attn_pairs[n_layers - grad_layers :]
        backward = 2 * linear_params_per_layer * tokens * grad_layers + 8 * sum(top) * q_dim + head
        lora = 6.0 * lora_params * tokens
    reference = forward if reference_forward else 0.0
    return {
        "flops": forward + backward + lora + reference,
        "forward": forward,
        "backward": backward,
        "lora": lora,
        "reference": reference,
        "tokens": float(tokens),
        "grad_layers": grad_layers,
    }


def policy_step_flops(policy, episodes: EpisodeBatch, *, reference_forward: bool = False) -> dict[str, Any]:
    """:func:`step_flops` of one ``train_step`` of ``policy`` (LoRA or full) on ``episodes``."""
    model = policy.model
    config = model.config
    hidden = int(config.hidden_size)
    n_layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    linear = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if ".layers.0." in name and isinstance(m, torch.nn.Linear) and "lora_" not in name
    )
    adapted: set[int] = set()
    lora_params = 0
    for name, param in model.named_parameters():
        if param.requires_grad and "lora_" in name:
            lora_params += param.numel()
            if ".layers." in name:
                adapted.add(int(name.split(".layers.")[1].split(".")[0]))
    lengths = [int(x) for x in episodes.attention_mask.sum(1).tolist()]
    layer_types = list(getattr(config, "layer_types", None) or ["full_attention"] * n_layers)
    window = getattr(config, "sliding_window", None)
    pairs = [
        attention_pairs(lengths, int(window) if kind == "sliding_attention" and window else None)
        for kind in layer_types
    ]
    finetune = "lora" if policy.is_lora else "full"
    counted = step_flops(
        linear_params_per_layer=linear,
        n_layers=n_layers,
        hidden=hidden,
        q_dim=heads * head_dim,
        vocab=int(config.vocab_size),
        tokens=float(sum(lengths)),
        attn_pairs=pairs,
        decisions=episodes.actions.numel(),
        finetune=finetune,
        grad_layers=n_layers - min(adapted) if adapted else 0,
        lora_params=lora_params,
        reference_forward=reference_forward,
    )
    return {**counted, "linear_params_per_layer": linear, "lora_params": lora_params, "n_layers": n_layers}


# ====================================================================================================
# Projection of the paper's runs
# ====================================================================================================

PAPER_RUNS: dict[str, dict[str, Any]] = {
    "primary": {
        "what": "Table 28 4B-Instruct: Dr. GRPO, LoRA r32/a64, 8 prompts x group 64, 15 turns",
        "train_config": "dr_grpo/lora",
        "episodes_per_step": 512,
        "tokens_per_episode": 1024,
        "steps": 95,
        "scheduled_steps": 500,
        "paper_hours": 20.0,
    },
    "fft": {
        "what": "Table 28 4B FFT RL: Dr. GRPO full fine-tune, 32 prompts x group 32",
        "train_config": "dr_grpo/full",
        "episodes_per_step": 1024,
        "tokens_per_episode": 1024,
        "steps": 95,
        "scheduled_steps": 500,
        "paper_hours": None,
    },
}
"""The paper's runs as projected (research notes §A.2: batch, rollout length, reported checkpoint,
S = 500, "about 20 h on 1xH200" for the primary run; the FFT run's time is not stated)."""


def project_hours(
    rollout_tps: float,
    train_tps: float,
    *,
    episodes_per_step: int,
    tokens_per_episode: float,
    steps: int,
    update_passes: int = 1,
) -> dict[str, float]:
    """GPU-hours of ``steps`` steps, each a rollout of ``episodes_per_step`` episodes and ``update_passes``
    training passes over them: ``steps · (E·L/rollout_tps + passes·E·L/train_tps) / 3600``.

    Example:
        >>> project_hours(1000.0, 2000.0, episodes_per_step=10, tokens_per_episode=100, steps=36)["hours"]
        0.015
    """
    tokens = episodes_per_step * tokens_per_episode
    rollout_s = tokens / rollout_tps
    train_s = update_passes * tokens / train_tps
    return {
        "tokens_per_step": float(tokens),
        "rollout_s_per_step": rollout_s,
        "train_s_per_step": train_s,
        "step_s": rollout_s + train_s,
        "hours": steps * (rollout_s + train_s) / 3600,
    }


def projection(entry: dict[str, Any] | None, *, code_path_check: bool) -> dict[str, Any]:
    """The paper's runs projected from a model's measurements (``entry``: ``results["models"]["qwen3-4b"]``)."""
    out: dict[str, Any] = {
        "label": "code-path check (CPU, tiny configs): not a number to quote"
        if code_path_check
        else "projection from this run's qwen3-4b measurements",
        "assumptions": (
            "per step: rollout of every episode by our sampler + one training pass (one update epoch, one "
            "minibatch, as the primary Dr. GRPO run); no reference pass (kappa unstated, 0 here), no "
            "evaluation or checkpoints; throughputs measured at this run's batch and episode length"
        ),
    }
    rollout = (entry or {}).get("rollout") or {}
    for key, run in PAPER_RUNS.items():
        train = ((entry or {}).get("train") or {}).get(run["train_config"]) or {}
        if not rollout.get("ours_tps") or not train.get("tps"):
            out[key] = {**run, "hours": None, "note": "not measured in this run"}
            continue
        common = {
            "episodes_per_step": run["episodes_per_step"],
            "tokens_per_episode": run["tokens_per_episode"],
        }
        at_ckpt = project_hours(rollout["ours_tps"], train["tps"], steps=run["steps"], **common)
        scheduled = project_hours(rollout["ours_tps"], train["tps"], steps=run["scheduled_steps"], **common)
        out[key] = {
            **run,
            **at_ckpt,
            "scheduled_hours": scheduled["hours"],
            "rollout_tps": rollout["ours_tps"],
            "train_tps": train["tps"],
            "paper_over_projected": run["paper_hours"] / at_ckpt["hours"] if run["paper_hours"] else None,
        }
    return out


# ====================================================================================================
# (a) rollouts
# ====================================================================================================


# ====================================================================================================
# (b) training steps
# ====================================================================================================


def bench_args(
    algo: str, finetune: str, *, episodes: int, micro_batch: int, turns: int, autocast: bool, device: str
):
    """The paper's settings (``training.Args`` defaults: LoRA r=32, alpha=64, every linear layer of every
    decoder layer) for one benchmark step: one epoch, one minibatch, the batch one GRPO group."""
    from training import Args, validate

    return validate(
        Args(
            algo=algo,  # type: ignore[arg-type]
            finetune=finetune,  # type: ignore[arg-type]
            lora_layers=None,
            episodes_per_step=episodes,
            group_size=episodes,
            micro_batch_size=micro_batch,
            minibatches=1,
            update_epochs=1,
            n_turns=turns,
            progress=False,
            eval_episodes=0,
            log_episodes=False,
            autocast=autocast,
            device=device,
        )
    )


class DeviceStep:
    """One ``training.train_step`` of a policy on a fixed batch (forward + loss + backward + optimizer
    step), timed with CUDA synchronised; calling it returns ``(wall seconds, process CPU seconds)``.

    Duck-types ``bench.trainer.TrainerStep`` (``policy``, ``episodes``, ``args``)."""

    def __init__(self, policy, args, episodes: EpisodeBatch, device: torch.device, label: str) -> None:
        from training import make_optimizer

        self.policy, self.args, self.episodes, self.device, self.label = policy, args, episodes, device, label
        self.optimizer = make_optimizer(policy, args)
        self.calls = 0

    def __call__(self) -> tuple[float, float]:
        from training import train_step

        sync(self.device)
        wall, cpu = time.perf_counter(), time.process_time()
        stats = train_step(self.policy, self.optimizer, self.episodes, self.args, step=0)
        sync(self.device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        log(
            f"  {self.label} step {self.calls}: {wall:.3f} s wall, {cpu:.2f} s CPU (loss {stats['loss']:.4g})"
        )
        self.calls += 1
        return wall, cpu


# ====================================================================================================
# (c) TRL GRPOTrainer, interleaved with our steps (bench.trainer.run_trl_interleaved)
# ====================================================================================================


def run_trl(ours: DeviceStep, tokenizer, *, reps: int, bf16: bool, device: torch.device) -> dict[str, Any]:
    """TRL's GRPOTrainer on ``ours``' model and adapter, interleaved with our steps
    (``bench.trainer.run_trl_interleaved``, which synchronises CUDA at every timing edge)."""
    from bench.trainer import run_trl_interleaved

    return run_trl_interleaved(ours, tokenizer, reps=reps, bf16=bf16, device=device)


def trl_available() -> str | None:
    """None when TRL's GRPOTrainer can run here, else why not."""
    import importlib.util

    missing = [m for m in ("trl", "datasets") if importlib.util.find_spec(m) is None]
    return f"not installed here: {', '.join(missing)}" if missing else None


# ====================================================================================================
# The run
# ====================================================================================================


@dataclasses.dataclass
class Plan:
    """Sizes of one model config's measurements."""

    rollout_episodes: int
    train_episodes: int
    """One GRPO group: the training batch and the rollout's group size."""
    micro_batch: int
    turns: int = 15
    reps: int = 3
    naive_reps: int = 1


CUDA_PLANS = {
    # 4 episodes of ~1.3k tokens per micro-batch keep a full fine-tune (fp32 weights, grads, AdamW, TBRM's
    # reference copy: ~88 GB) with its activations inside the H200's 139 GiB
    "qwen3-4b": Plan(rollout_episodes=32, train_episodes=16, micro_batch=4, reps=2),
    "smollm2-135m": Plan(rollout_episodes=64, train_episodes=32, micro_batch=16),
    "gemma3-270m": Plan(rollout_episodes=64, train_episodes=32, micro_batch=8),
}
TINY_PLAN = Plan(rollout_episodes=4, train_episodes=2, micro_batch=2, turns=3, reps=1)
FIRST_ESTIMATE_S = {"rollout": 60.0, "train": 30.0, "trl": 60.0}
"""Guessed seconds of a model's first measurement of each kind, before one has been timed."""
FIRST_ESTIMATE_S_TINY = {"rollout": 5.0, "train": 2.0, "trl": 15.0}


class Budget:
    """Wall-clock budget of the run: measurements whose estimate exceeds what is left are skipped."""

    def __init__(self, minutes: float) -> None:
        self.deadline = time.perf_counter() + 60 * minutes
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def allows(self, what: str, estimate_s: float) -> bool:
        if estimate_s <= self.left():
            return True
        note = f"skipped {what}: estimated {estimate_s:.0f} s, {max(self.left(), 0):.0f} s of the budget left"
        log(note)
        self.skipped.append(note)
        return False


def _median_tps(tokens: float, seconds: Sequence[float]) -> float | None:
    return tokens / statistics.median(seconds) if seconds else None


def measure_rollout(
    policy, tokenizer, seeds: list[int], plan: Plan, ctx: dict[str, Any], budget: Budget
) -> tuple[dict[str, Any], EpisodeBatch]:
    """(a): our sampler and plain per-turn ``generate`` over the same episodes, interleaved."""
    device, bf16 = ctx["device"], ctx["bf16"]
    maze = MazeConfig(n_turns=plan.turns)
    collect_episodes(policy.model, tokenizer, seeds=seeds[:2], config=MazeConfig(n_turns=2), autocast=bf16)
    ours_s: list[float] = []
    naive_s: list[float] = []
    memory = {"ours": 0.0, "naive": 0.0}
    episodes = None
    for rep in range(max(plan.reps, plan.naive_reps)):  # interleaved: both meet the same conditions
        if rep < plan.reps:
            reset_peak(device)
            sync(device)
            t = time.perf_counter()
            episodes = collect_episodes(policy.model, tokenizer, seeds=seeds, config=maze, autocast=bf16)
            sync(device)
            ours_s.append(time.perf_counter() - t)
            memory["ours"] = max(memory["ours"], peak_memory_gb(device))
            log(f"  rollout {rep}: {ours_s[-1]:.3f} s for {episodes.n_tokens} tokens")
        if rep < plan.naive_reps and episodes is not None:
            reset_peak(device)
            naive_s.append(
                naive_rollout_seconds(policy.model, tokenizer, episodes, autocast=bf16, device=device)
            )
            memory["naive"] = max(memory["naive"], peak_memory_gb(device))
            log(f"  plain per-turn generate {rep}: {naive_s[-1]:.3f} s")
        if rep + 1 < plan.reps and budget.left() < 2 * statistics.fsum(ours_s + naive_s) / (rep + 1):
            log(f"  budget: stopping the rollout repetitions after {rep + 1}")
            break
    assert episodes is not None
    tokens = episodes.n_tokens
    ours_tps, naive_tps = _median_tps(tokens, ours_s), _median_tps(tokens, naive_s)
    rollout = {
        "episodes": len(episodes),
        "turns": plan.turns,
        "tokens": tokens,
        "tokens_per_episode": tokens / len(episodes),
        "ours_s": ours_s,
        "naive_s": naive_s,
        "ours_tps": ours_tps,
        "naive_tps": naive_tps,
        "ratio": ours_tps / naive_tps if ours_tps and naive_tps else None,
        "peak_memory_gb": memory,
    }
    log(
        f"(a) rollout: {len(episodes)} episodes x {plan.turns} turns, {tokens} tokens; ours {ours_tps:.0f} "
        f"tok/s, plain generate {naive_tps or float('nan'):.0f} tok/s -> {rollout['ratio'] or float('nan'):.2f}x"
    )
    return rollout, episodes


def measure_train(step: DeviceStep, plan: Plan, *, reference_forward: bool) -> dict[str, Any]:
    """(b): a warm-up and ``plan.reps`` timed steps; tokens/s, FLOPs and peak memory."""
    device = step.device
    reset_peak(device)
    step()  # warm-up
    times = [step()[0] for _ in range(plan.reps)]
    counted = policy_step_flops(step.policy, step.episodes, reference_forward=reference_forward)
    wall = statistics.median(times)
    result = {
        "tokens": counted["tokens"],
        "step_s": times,
        "tps": counted["tokens"] / wall,
        "flops": counted["flops"],
        "tflops_per_s": counted["flops"] / wall / 1e12,
        "peak_memory_gb": peak_memory_gb(device),
        "trainable_params": sum(p.numel() for p in step.policy.trainable_parameters().values()),
        "flop_count": counted,
    }
    log(
        f"(b) {step.label}: {counted['tokens']:.0f} tokens in {wall:.3f} s -> {result['tps']:.0f} tok/s, "
        f"{result['tflops_per_s']:.3g} TFLOP/s, peak memory {result['peak_memory_gb']:.2f} GB"
    )
    return result


def bench_model(name: str, plan: Plan, ctx: dict[str, Any], budget: Budget, save: Callable[[], None]) -> dict:
    """Every measurement of one model config into ``ctx["results"]["models"][name]``; ``save`` after each.

    A failed measurement (an out-of-memory error, say) is recorded under ``errors`` and the run goes on.
    """
    from training import make_policy

    device, tiny = ctx["device"], ctx["tiny"]
    tokenizer = bench_tokenizer(name, ctx["tokenizer"])
    probe = build_model(name, tiny=tiny, device="meta", tokenizer=tokenizer)
    entry: dict[str, Any] = {
        "config": {
            "source": MODEL_CONFIGS[name].source,
            "class": MODEL_CONFIGS[name].model_class,
            "tiny": tiny,
            "params": parameter_count(probe),
            **{k: getattr(probe.config, k) for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
            "tokenizer": tokenizer.name_or_path,
        },
        "plan": dataclasses.asdict(plan),
        "train": {},
        "errors": {},
    }
    del probe
    ctx["results"]["models"][name] = entry
    estimates = dict(FIRST_ESTIMATE_S_TINY if tiny else FIRST_ESTIMATE_S)
    group = plan.train_episodes
    seeds = [1000 + i // group for i in range(plan.rollout_episodes)]  # GRPO groups share a maze
    kw = {
        "micro_batch": plan.micro_batch,
        "turns": plan.turns,
        "autocast": ctx["bf16"],
        "device": str(device),
    }
    log(f"== {name}{' (tiny)' if tiny else ''}: {entry['config']['params'] / 1e6:.1f} M parameters; {plan}")

    def new_policy(algo: str, finetune: str):
        args = bench_args(algo, finetune, episodes=group, **kw)
        model = build_model(name, tiny=tiny, device=device, tokenizer=tokenizer)
        return make_policy(args, model, tokenizer), args

    # (a) rollouts by the dr_grpo + LoRA policy, which then takes the primary training step and meets TRL
    policy = args = None
    train_batch: EpisodeBatch | None = None
    if budget.allows(f"{name} rollout", estimates["rollout"]):
        start = time.perf_counter()
        try:
            policy, args = new_policy("dr_grpo", "lora")
            entry["rollout"], episodes = measure_rollout(policy, tokenizer, seeds, plan, ctx, budget)
            train_batch = episodes.select(list(range(group)))
        except Exception as error:
            entry["errors"]["rollout"] = f"{type(error).__name__}: {error}"
            log(f"  rollout FAILED: {entry['errors']['rollout']}")
        estimates["rollout"] = time.perf_counter() - start
        save()
    if train_batch is None:
        return entry

    # (b) training steps, each configuration on a fresh model; (c) TRL beside the primary one
    for algo, finetune in TRAIN_CONFIGS:
        label = f"{algo}/{finetune}"
        factor = 1.5 if finetune == "full" else 1.0
        if label != PRIMARY:
            policy = args = None  # the previous model goes before the next is built
            free_memory(device)
        if not budget.allows(f"{name} {label} training step", estimates["train"] * factor):
            continue
        start = time.perf_counter()
        try:
            if policy is None:
                policy, args = new_policy(algo, finetune)
            step = DeviceStep(policy, args, train_batch, device, f"{name} {label}")
            entry["train"][label] = measure_train(step, plan, reference_forward=algo == "tbrm")
        except Exception as error:
            entry["errors"][label] = f"{type(error).__name__}: {error}"
            log(f"  {label} FAILED: {entry['errors'][label]}")
            continue
        finally:
            estimates["train"] = (time.perf_counter() - start) / factor
            save()
        if label == PRIMARY:
            try:
                entry["trl"] = trl_entry(step, tokenizer, plan, ctx, budget, estimates)
            except Exception as error:
                entry["errors"]["trl"] = f"{type(error).__name__}: {error}"
                log(f"  TRL FAILED: {entry['errors']['trl']}")
            save()
        del step
    policy = args = None
    free_memory(device)
    return entry


def trl_entry(
    step: DeviceStep, tokenizer, plan: Plan, ctx: dict[str, Any], budget: Budget, estimates
) -> dict:
    """TRL's GRPOTrainer beside ``step`` (the dr_grpo + LoRA step), or why it was skipped."""
    if ctx["skip_trl"]:
        return {"skipped": "--skip-trl"}
    missing = trl_available()
    if missing:
        log(f"  TRL skipped: {missing}")
        return {"skipped": missing}
    if not budget.allows("TRL GRPOTrainer", estimates["trl"]):
        return {"skipped": "budget"}
    start = time.perf_counter()
    device = ctx["device"]
    reset_peak(device)
    trl = run_trl(step, tokenizer, reps=plan.reps, bf16=ctx["bf16"], device=device)
    estimates["trl"] = time.perf_counter() - start
    timed_trl, timed_ours = trl["trl_steps"][1:], trl["our_steps"][1:]
    completion = statistics.mean(trl["completion_mean_length"][1:] or trl["completion_mean_length"])
    trl_tokens = len(step.episodes) * (trl["prompt_tokens"] + completion)
    trl_wall = statistics.median(s["wall"] - s["prepare_wall"] for s in timed_trl)
    our_wall = statistics.median(w for w, _ in timed_ours)
    our_tokens = float(step.episodes.attention_mask.sum())
    out = {
        "tokens": trl_tokens,
        "prompt_tokens": trl["prompt_tokens"],
        "completion_mean_length": completion,
        "step_s": [s["wall"] - s["prepare_wall"] for s in timed_trl],
        "tps": trl_tokens / trl_wall,
        "ours_interleaved_s": [w for w, _ in timed_ours],
        "ours_interleaved_tps": our_tokens / our_wall,
        "peak_memory_gb": peak_memory_gb(device),
    }
    out["ratio"] = out["ours_interleaved_tps"] / out["tps"]
    log(
        f"(c) TRL GRPOTrainer: {trl_tokens:.0f} tokens in {trl_wall:.3f} s -> {out['tps']:.0f} tok/s; ours "
        f"interleaved {out['ours_interleaved_tps']:.0f} tok/s -> {out['ratio']:.2f}x"
    )
    return out


def headline(entry: dict[str, Any], peak_tflops: float | None) -> dict[str, float | None]:
    """The three BENCH figures of one model config (None where not measured)."""
    primary = entry.get("train", {}).get(PRIMARY) or {}
    mfu = primary["tflops_per_s"] / peak_tflops if primary and peak_tflops else None
    return {
        "gpu_rollout_vs_generate": (entry.get("rollout") or {}).get("ratio"),
        "gpu_train_vs_trl": (entry.get("trl") or {}).get("ratio"),
        "gpu_train_mfu": mfu,
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "nan" if value is None else f"{value:.{digits}f}"


def bench_lines(results: dict[str, Any]) -> list[str]:
    """``BENCH <name>[<model>] <value> <target>`` per model config, then the projected hours."""
    lines = []
    for name, entry in results["models"].items():
        for key, value in entry.get("bench", {}).items():
            lines.append(f"BENCH {key}[{name}] {_fmt(value)} {TARGETS[key]}")
    hours = (results.get("projection") or {}).get("primary", {}).get("hours")
    lines.append(f"BENCH gpu_projected_hours {_fmt(hours, 2)} report")
    return lines


def finish(results: dict[str, Any], out: Path, start: float) -> list[str]:
    """Fill the headline figures and the projection; write ``gpu_bench.json`` and ``bench.txt``."""
    peaks = results["matmul_peak_tflops"]
    peak = peaks.get(results["mfu_dtype"])
    for entry in results["models"].values():
        entry["bench"] = headline(entry, peak)
        for train in entry.get("train", {}).values():
            train["mfu"] = train["tflops_per_s"] / peak if peak else None
    results["projection"] = projection(
        results["models"].get("qwen3-4b"),
        code_path_check=results["device"]["type"] != "cuda" or results["tiny"],
    )
    lines = bench_lines(results)
    results["bench_lines"] = lines
    results["wall_s"] = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "bench.txt").write_text("\n".join(lines) + "\n")
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--tiny", action="store_true", help="tiny configs (2 layers, width 64) for CPU tests")
    parser.add_argument(
        "--models", nargs="+", default=list(MODEL_CONFIGS), choices=list(MODEL_CONFIGS), help="in this order"
    )
    parser.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget of the whole run")
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs/bench_gpu")
    parser.add_argument("--skip-trl", action="store_true", help="do not run TRL's GRPOTrainer")
    parser.add_argument(
        "--autocast", action="store_true", help="bfloat16 autocast on CPU too (default: the dtype rule)"
    )
    parser.add_argument("--tokenizer", default="auto", choices=("auto", "smollm2"))
    parser.add_argument("--turns", type=int, help="turns per episode (default 15; tiny 3)")
    parser.add_argument("--reps", type=int, help="timed repetitions (medians)")
    parser.add_argument("--episodes", type=int, help="rollout episodes (a multiple of --train-episodes)")
    parser.add_argument("--train-episodes", type=int, help="episodes per training step (one GRPO group)")
    parser.add_argument("--micro-batch", type=int, help="episodes per forward/backward")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 2 on CPU)")
    parser.add_argument(
        "--export-tokenizers",
        metavar="DIR",
        help="write the tokenizers the run needs as a models cache in DIR (for WELFARE_AXIS_CACHE) and exit",
    )
    cli = parser.parse_args(argv)
    if cli.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here (torch.cuda.is_available() is False)")
    if cli.device == "auto":
        cli.device = "cuda" if torch.cuda.is_available() else "cpu"
    cli.device = torch.device(cli.device)
    if cli.device.type == "cpu" and not cli.tiny and "qwen3-4b" in cli.models and not cli.export_tokenizers:
        parser.error(
            "the full-size qwen3-4b on a CPU needs ~80 GB and hours: use --tiny, or --models smollm2-135m"
        )
    return cli


def plan_for(name: str, cli: argparse.Namespace) -> Plan:
    plan = dataclasses.replace(TINY_PLAN if cli.tiny or cli.device.type == "cpu" else CUDA_PLANS[name])
    for field, value in (
        ("turns", cli.turns),
        ("reps", cli.reps),
        ("rollout_episodes", cli.episodes),
        ("train_episodes", cli.train_episodes),
        ("micro_batch", cli.micro_batch),
    ):
        if value is not None:
            setattr(plan, field, value)
    if plan.rollout_episodes % plan.train_episodes or plan.train_episodes % plan.micro_batch:
        raise SystemExit(
            f"{name}: episodes must be a multiple of train-episodes, and that of micro-batch: {plan}"
        )
    return plan


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    cli = parse_args(argv)
    if cli.export_tokenizers:
        names = {
            MODEL_CONFIGS[m].tokenizer if cli.tokenizer == "auto" else "smollm2-135m-instruct"
            for m in cli.models
        }
        for path in export_tokenizers(cli.export_tokenizers, sorted(names)):
            log(f"wrote {path}")
        return {}
    device = cli.device
    if device.type == "cpu":
        torch.set_num_threads(cli.threads or 2)
    elif cli.threads:
        torch.set_num_threads(cli.threads)
    budget = Budget(cli.minutes)
    bf16 = resolve_autocast(True if cli.autocast else None, device)
    out = Path(cli.out)
    import transformers

    start = time.perf_counter()
    results: dict[str, Any] = {
        "bench": "bench.gpu",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": {
            "type": device.type,
            "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "tiny": cli.tiny,
        "budget_minutes": cli.minutes,
        "autocast_bf16": bf16,
        "mfu_dtype": "bfloat16" if bf16 else "float32",
        "models": {},
        "skipped": budget.skipped,
        "notes": [],
    }
    if device.type != "cuda" or cli.tiny:
        results["notes"].append("code-path check (CPU and/or tiny configs): the figures are not GPU figures")
    peaks = measure_peaks(device, bf16)
    results["matmul_peak_tflops"] = peaks
    log(
        f"device {results['device']['name']}; matmul peak "
        + ", ".join(f"{k} {v:.3g} TFLOP/s" for k, v in peaks.items())
        + f"; bf16 autocast {'on' if bf16 else 'off'}; budget {cli.minutes:g} min"
    )
    ctx = {
        "device": device,
        "tiny": cli.tiny,
        "bf16": bf16,
        "tokenizer": cli.tokenizer,
        "skip_trl": cli.skip_trl,
    }
    ctx["results"] = results

    def save() -> None:
        finish(results, out, start)

    for name in cli.models:
        bench_model(name, plan_for(name, cli), ctx, budget, save)
        free_memory(device)
    after = measure_peaks(device, bf16)
    for key, value in after.items():
        if value > peaks.get(key, 0.0):
            log(f"matmul peak {key} re-measured after the steps: {value:.3g} TFLOP/s (higher; used for MFU)")
            peaks[key] = value
    lines = finish(results, out, start)
    for name, entry in results["models"].items():
        for label, train in entry.get("train", {}).items():
            print(
                f"{name} {label}: {train['tps']:.0f} tok/s, MFU {_fmt(train['mfu'])}, "
                f"peak memory {train['peak_memory_gb']:.2f} GB"
            )
    primary = results["projection"].get("primary", {})
    if primary.get("hours") is not None:
        print(
            f"projection ({results['projection']['label']}): primary run {primary['hours']:.2f} GPU-h for "
            f"{primary['steps']} steps, {primary['scheduled_hours']:.2f} h for {primary['scheduled_steps']}; "
            f"paper: ~{primary['paper_hours']:g} h"
        )
    for note in results["notes"]:
        print(f"NOTE {note}")
    log(f"wrote {out / 'gpu_bench.json'} and {out / 'bench.txt'}; wall {results['wall_s']:.0f} s")
    for line in lines:
        print(line)
    return results


if __name__ == "__main__":
    main()
