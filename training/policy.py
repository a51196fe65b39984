"""The policy being trained: the model with LoRA adapters (or all weights), its reference, the optimizer
and the precision rule."""

from __future__ import annotations

import contextlib
import copy
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from probes.models import apply_system_prompt, load_model, resolve_autocast, resolve_device, tiny_model
from training import distributed as D
from training.algorithms import ALGORITHMS
from training.config import TINY_MODELS, Args

# ====================================================================================================
# Model
# ====================================================================================================


@dataclass
class Policy:
    """The trained model, its tokenizer, and (for full fine-tuning) a frozen reference copy."""

    model: nn.Module
    tokenizer: Any
    reference: nn.Module | None = None
    is_lora: bool = True
    parallel: D.ParallelModel | None = None
    """Set by :func:`main` under torch.distributed: differentiable calls go through it (DDP/FSDP)."""

    @property
    def ctx(self) -> D.DistContext:
        return self.parallel.ctx if self.parallel is not None else D.DistContext()

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(model, *args)``: through DDP/FSDP when parallel (gradients all-reduced), else directly."""
        if self.parallel is not None:
            return self.parallel(fn, *args, **kwargs)
        return fn(self.model, *args, **kwargs)

    def call_no_grad(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(model, *args)`` without gradients (FSDP: full parameters gathered for the call)."""
        if self.parallel is not None:
            return self.parallel.rollout(fn, *args, **kwargs)
        with torch.no_grad():
            return fn(self.model, *args, **kwargs)

    @contextlib.contextmanager
    def reference_model(self) -> Iterator[nn.Module]:
        """The reference policy: the adapter switched off (LoRA) or the frozen copy (full fine-tuning)."""
        if self.is_lora:
            with self.model.disable_adapter():
                yield self.model
        else:
            if self.reference is None:
                raise RuntimeError("full fine-tuning without a reference copy (kl_coef=0 and not tbrm)")
            yield self.reference

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}


def needs_reference(args: Args) -> bool:
    """Whether the run reads a reference policy (TBRM always; the policy gradients when ``kl_coef > 0``)."""
    return ALGORITHMS[args.algo].needs_reference(args)


def load_base_model(args: Args) -> tuple[nn.Module, Any]:
    """The untrained model and tokenizer (float32 weights; ``tiny-*`` names give random tiny models)."""

    if args.model in TINY_MODELS:
        model, tokenizer = tiny_model(args.model.removeprefix("tiny-"), seed=args.seed)
        return model.to(resolve_device(args.device)), apply_system_prompt(tokenizer, args.system_prompt)
    return load_model(args.model, device=args.device, dtype="float32", system_prompt=args.system_prompt)


def _lora_layer_indices(model: nn.Module, top: int | None) -> list[int] | None:
    if top is None:
        return None
    n_layers = int(model.config.num_hidden_layers)
    if top > n_layers:
        raise ValueError(f"lora_layers={top} exceeds the model's {n_layers} decoder layers")
    return list(range(n_layers - top, n_layers))


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """peft reads ``model.is_gradient_checkpointing``, which transformers 5 deprecates with a
    FutureWarning on every call; silence that one message (others still show)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def make_policy(args: Args, model: nn.Module | None = None, tokenizer: Any = None) -> Policy:
    """Load the model (unless given) and add LoRA adapters or prepare full fine-tuning."""
    if model is None:
        model, tokenizer = load_base_model(args)
    if args.finetune == "full":
        reference = None
        if needs_reference(args):
            reference = copy.deepcopy(model).eval()
            reference.requires_grad_(False)
        model.requires_grad_(True)
        model.train()
        return Policy(model, tokenizer, reference=reference, is_lora=False)
    from peft import LoraConfig, get_peft_model

    targets = list(args.lora_targets)
    if targets == [
        "all-linear"
    ]:  # every linear layer of the decoder blocks (peft's "all-linear" minus the head)
        targets = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, m in model.named_modules()
                if isinstance(m, nn.Linear) and ".layers." in name
            }
        )
    layers = _lora_layer_indices(model, args.lora_layers)
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=0.0,
        target_modules=targets,
        layers_to_transform=layers,
        layers_pattern="layers" if layers is not None else None,
        bias="none",
    )
    with torch.random.fork_rng(devices=[]), quiet_peft():
        torch.manual_seed(args.seed)  # LoRA A init: a pure function of the seed
        peft_model = get_peft_model(model, config)
    peft_model.train()
    return Policy(peft_model, tokenizer, is_lora=True)


def merged_model(policy: Policy) -> nn.Module:
    """The policy as a plain HF model: LoRA adapters merged into the weights (full fine-tuning: the model)."""
    if not policy.is_lora:
        return policy.model
    with quiet_peft():
        return policy.model.merge_and_unload()


_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


def make_optimizer(policy: Policy, args: Args) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (LoRA adapters or all weights).

    Each parameter group carries its peak learning rate as ``peak_lr`` (the update anneals ``lr`` from it):
    one group at ``args.lr``, or, with ``args.top_lr`` set, the weights of the top ``args.top_lr_layers``
    decoder layers in a second group at ``top_lr`` (embeddings, final norm and head stay at ``lr``). The
    optimizer's state indices follow ``optimizer.param_groups`` (what a checkpoint stores and reloads).
    """
    named = policy.trainable_parameters()
    if not named:
        raise RuntimeError("the model has no trainable parameters")
    base = {"lr": args.lr, "peak_lr": args.lr}
    if args.top_lr is None:
        groups = [{"params": list(named.values()), **base}]
    else:
        # a model with fewer layers trains them all at top_lr (the study's default names 8 whatever the model)
        first_top = max(0, int(policy.model.config.num_hidden_layers) - args.top_lr_layers)
        top, rest = [], []
        for name, p in named.items():
            match = _LAYER_INDEX.search(name)
            (top if match is not None and int(match.group(1)) >= first_top else rest).append(p)
        if not top:
            raise ValueError(
                f"top_lr is set but no trainable weight lies in the top {args.top_lr_layers} layers"
            )
        groups = [{"params": rest, **base}, {"params": top, "lr": args.top_lr, "peak_lr": args.top_lr}]
        groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, weight_decay=args.weight_decay, betas=(0.9, 0.999), eps=1e-8)


def use_autocast(args: Args, model: nn.Module) -> bool:
    """Whether this run's forwards use bfloat16 autocast: ``args.autocast`` under the device's rule."""

    return resolve_autocast(args.autocast, next(model.parameters()).device)


def autocast_context(args: Args, model: nn.Module):
    device = next(model.parameters()).device
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_autocast(args, model))
