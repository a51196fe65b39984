"""Read activations: a hook context manager (``record``) and a batched helper (``capture``).

``record`` is the primitive: plain forward hooks on the site modules of ``probes.layers``, removed in
``finally`` (only the handles it added). ``capture`` tokenizes, batches, and returns one row per text
(or per selected token) for each layer, with three interchangeable backends:

- ``"hooks"`` (default): ``record`` on the HF model. Fastest; selects positions inside the hook, so
  for ``"last"`` only ``(batch, d_model)`` is copied per layer, and stops the forward after the
  deepest requested block (no unembedding is computed).
- ``"nnsight"``: the same reads through nnsight 0.8 (``TransformersModel(model, tokenizer=...)``). A
  *copy* of the tokenizer is handed over, because nnsight switches a tokenizer to left padding.
- ``"transformer_lens"``: ``TransformerBridge.boot_transformers(..., hf_model=copy)`` and
  ``run_with_cache`` with the names ``blocks.{l}.hook_resid_post`` / ``hook_attn_out`` /
  ``hook_mlp_out`` (``prepend_bos=False``: the texts are tokenized here). Booting switches the HF
  model it is given to eager attention in place, so it is booted on a ``deepcopy`` and the caller's
  model is untouched. Pass an already booted ``TransformerBridge`` as ``model`` to reuse it.

Every backend sees the same right-padded tokens with the same attention mask, and right padding
leaves each row's real tokens at positions ``0..len-1``, so batched numbers equal unbatched ones.

Example:
    >>> from probes.models import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> acts = capture(model, tok, ["I went north.", "A wall."], layers=[0, 1])
    >>> acts[1].shape
    torch.Size([2, 64])
    >>> batch = tok(["I went north."], return_tensors="pt")
    >>> with record(model, [1], positions="last") as got:
    ...     _ = model(**batch)
    >>> torch.allclose(got[1][0], acts[1][0], atol=1e-5)
    True
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from probes import layers as _layers
from probes import positions as _positions
from probes.positions import Message, Position
from probes.resources import release_freed_memory

Backend = Literal["hooks", "nnsight", "transformer_lens"]
BACKENDS: tuple[str, ...] = ("hooks", "nnsight", "transformer_lens")
Reduce = Literal["mean", "none"]


class CaptureError(ValueError):
    """Bad capture input (empty texts, unknown backend, NaN activations...)."""


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass once the deepest requested block has run."""


def _first(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def record(
    model: nn.Module,
    layers: int | Sequence[int] | str = "all",
    site: str = "resid_post",
    positions: Position | None = None,
    *,
    attention_mask: Tensor | None = None,
    assistant_mask: Tensor | None = None,
) -> Iterator[dict[int, Tensor]]:
    """Record ``site`` activations at ``layers`` during forwards run inside the ``with`` block.

    Args:
        model: an HF causal LM (peft-wrapped is fine).
        layers: ``"all"``, an int or a list of ints (negative counts from the end).
        site: ``"resid_post"`` (block output), ``"attn_out"`` or ``"mlp_out"``; see ``probes.layers``.
        positions: ``None`` keeps the full ``(batch, pos, d_model)`` tensor. ``"last"`` or an int gives
            ``(batch, d_model)``; ``"all"``, spans, ``"assistant"`` and bool masks give
            ``(n_selected, d_model)`` rows in batch order. Padding is read from ``attention_mask``, or
            else from the ``attention_mask`` the model is called with.
        attention_mask: ``(batch, pos)`` mask overriding the one passed to the model.
        assistant_mask: ``(batch, pos)`` mask for ``positions="assistant"``.

    Yields:
        ``dict[layer, Tensor]``, filled (overwritten) by every forward pass; detached.

    Example:
        >>> with record(model, layers=[0, -1], positions="last") as acts:  # doctest: +SKIP
        ...     model(**batch)
        >>> acts[0].shape  # (batch, d_model)  # doctest: +SKIP
    """
    site = _layers.check_site(site)
    chosen = _layers.check_layers(model, layers)
    acts: dict[int, Tensor] = {}
    state: dict[str, Tensor | None] = {"mask": attention_mask}
    handles: list[torch.utils.hooks.RemovableHandle] = []
    needs_mask = positions is not None and attention_mask is None

    def grab_mask(module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], Tensor):
            mask = args[1]
        state["mask"] = mask if isinstance(mask, Tensor) and mask.ndim == 2 else None

    def make_hook(layer: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            hidden = _first(output)
            if positions is None:
                acts[layer] = hidden.detach().clone()
                return
            mask = state["mask"]
            if mask is not None and mask.shape[1] != hidden.shape[1]:
                # generate() with a KV cache: the mask covers the cache too; keep the new positions.
                mask = mask[:, -hidden.shape[1] :]
            acts[layer] = _positions.gather_positions(
                hidden.detach(), positions, mask, assistant_mask=assistant_mask
            )

        return hook

    try:
        if needs_mask:
            handles.append(_layers.backbone(model).register_forward_pre_hook(grab_mask, with_kwargs=True))
        for layer in chosen:
            module = _layers.site_module(model, layer, site)
            handles.append(module.register_forward_hook(make_hook(layer)))
        yield acts
    finally:
        for handle in handles:
            handle.remove()


# --------------------------------------------------------------------------------------------------
# Batched capture
# --------------------------------------------------------------------------------------------------


def _is_chat(item: Any) -> bool:
    return isinstance(item, list | tuple) and (not item or isinstance(item[0], dict))


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def _prepare_items(
    tokenizer: Any,
    items: list[Any],
    *,
    close_final: bool,
    add_special_tokens: bool | None,
    need_assistant: bool,
) -> tuple[list[Any], bool | None, list[int]]:
    """Render chats once (unless assistant spans are needed); return items, special-token flag, lengths."""
    chats = [_is_chat(item) for item in items]
    if any(chats) and not all(chats):
        raise CaptureError("mixing plain strings and chat messages in one capture call is not supported")
    is_chat = all(chats)
    if need_assistant and not is_chat:
        raise CaptureError("position='assistant' needs chats (lists of {'role', 'content'} messages)")
    if is_chat and not need_assistant:
        # Chat-template output carries its own special tokens.
        items = [_positions.render_messages(tokenizer, item, close_final=close_final) for item in items]
        add_special_tokens = False
    if is_chat and need_assistant:
        lengths = [
            len(_positions.render_messages(tokenizer, item, close_final=close_final)) for item in items
        ]
    else:
        lengths = [len(item) for item in items]  # characters: a good enough proxy for sorting
    return items, add_special_tokens, lengths


def _encode_batch(
    tokenizer: Any,
    items: Sequence[Any],
    *,
    close_final: bool,
    add_special_tokens: bool | None,
    need_assistant: bool,
) -> tuple[dict[str, Tensor], Tensor | None]:
    if need_assistant:
        encoded, assistant, _ = _positions.encode_chats(
            tokenizer, items, close_final=close_final, padding_side="right"
        )
        return encoded, assistant
    return _positions.encode_texts(
        tokenizer, items, add_special_tokens=add_special_tokens, padding_side="right"
    ), None


def _reduce_rows(selected: Tensor, row_counts: Tensor, reduce: Reduce) -> Tensor:
    if reduce == "none":
        return selected
    sums = torch.zeros(row_counts.shape[0], selected.shape[-1], dtype=selected.dtype, device=selected.device)
    row_ids = torch.repeat_interleave(torch.arange(row_counts.shape[0], device=selected.device), row_counts)
    sums.index_add_(0, row_ids, selected)
    return sums / row_counts[:, None].to(selected.dtype)


def _single_row_rule(position: Position | None) -> bool:
    return (isinstance(position, str) and position == "last") or (
        isinstance(position, int) and not isinstance(position, bool)
    )


def _raise_stop(module: nn.Module, args: tuple, output: Any) -> None:
    raise _StopForward


def _run_hooks_gathered(
    model: nn.Module,
    encoded: dict[str, Tensor],
    layers: list[int],
    site: str,
    position: Position | None,
    assistant_mask: Tensor | None,
) -> dict[int, Tensor]:
    deepest = max(layers)
    with record(
        model,
        layers,
        site,
        positions=position,
        attention_mask=encoded["attention_mask"],
        assistant_mask=assistant_mask,
    ) as acts:
        stopper = _layers.blocks(model)[deepest].register_forward_hook(_raise_stop)
        try:
            model(**encoded, use_cache=False)
        except _StopForward:
            pass
        finally:
            stopper.remove()
    return dict(acts)


def _nnsight_envoy(wrapped: Any, model: nn.Module, layer: int, site: str) -> Any:
    base = _layers.unwrap(model)
    target = _layers.site_module(base, layer, site)
    path = next(name for name, module in base.named_modules() if module is target)
    envoy = wrapped
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def _run_nnsight(
    wrapped: Any,
    model: nn.Module,
    encoded: dict[str, Tensor],
    layers: list[int],
    site: str,
    position: Position | None,
    assistant_mask: Tensor | None,
) -> dict[int, Tensor]:
    import nnsight

    mask = encoded["attention_mask"]
    batch = mask.shape[0]
    if _single_row_rule(position):
        selection = _positions.position_mask(position, mask)
        index = selection.int().argmax(dim=1)
    else:
        selection = _positions.position_mask(position, mask, assistant_mask=assistant_mask)
        index = None
    rows = torch.arange(batch, device=mask.device)
    envoys = {layer: _nnsight_envoy(wrapped, model, layer, site) for layer in layers}
    with wrapped.trace(dict(encoded)):
        out = nnsight.save({})
        for layer in sorted(layers):  # sort to follow execution order
            hidden = envoys[layer].output
            if isinstance(hidden, tuple):
                hidden = hidden[0]
            if index is not None:  # index tensors follow the activations (a remote model's GPU)
                out[layer] = hidden[rows.to(hidden.device), index.to(hidden.device)]
            else:
                out[layer] = hidden[selection.to(hidden.device)]
    return dict(out)


def boot_bridge(model: nn.Module, tokenizer: Any) -> Any:
    """A TransformerLens ``TransformerBridge`` around a deep copy of ``model`` (the original is untouched)."""
    from transformer_lens.model_bridge import TransformerBridge

    base = _layers.unwrap(model)
    clone = copy.deepcopy(base)
    if not getattr(clone.config, "architectures", None):
        clone.config.architectures = [type(clone).__name__]
    return TransformerBridge.boot_transformers(_layers.model_name(base), hf_model=clone, tokenizer=tokenizer)


def _is_bridge(model: Any) -> bool:
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, TransformerBridge)


def _run_bridge(
    bridge: Any,
    encoded: dict[str, Tensor],
    layers: list[int],
    site: str,
    position: Position | None,
    assistant_mask: Tensor | None,
) -> dict[int, Tensor]:
    names = [_layers.hook_name(layer, site) for layer in layers]
    mask = encoded["attention_mask"]
    _, cache = bridge.run_with_cache(
        encoded["input_ids"],
        names_filter=names,
        prepend_bos=False,
        attention_mask=mask,
        stop_at_layer=max(layers) + 1 if max(layers) + 1 < bridge.cfg.n_layers else None,
    )
    out = {}
    for layer, name in zip(layers, names, strict=True):
        hidden = cache[name]
        out[layer] = _positions.gather_positions(hidden, position, mask, assistant_mask=assistant_mask)
    return out


def capture(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str] | Sequence[Sequence[Message]],
    layers: int | Sequence[int] | str = "all",
    site: str = "resid_post",
    position: Position = "last",
    batch_size: int = 16,
    backend: Backend = "hooks",
    *,
    reduce: Reduce = "mean",
    close_final: bool = True,
    add_special_tokens: bool | None = None,
    dtype: torch.dtype = torch.float32,
    sort_by_length: bool = True,
    progress: bool = False,
    remote: bool | str = False,
) -> dict[int, Float[Tensor, "n d_model"]]:
    """Activations of ``texts`` at ``layers``, one row per text, on the CPU.

    Args:
        model: HF causal LM (or a booted ``TransformerBridge`` with ``backend="transformer_lens"``).
        tokenizer: its tokenizer (needs a pad token).
        texts: strings, or chats (lists of ``{"role", "content"}``) rendered with the chat template.
            Strings already starting with the BOS token (chat renderings) get no second BOS.
        layers: ``"all"``, an int or a list (negative counts from the end).
        site: ``"resid_post"``, ``"attn_out"`` or ``"mlp_out"``.
        position: ``"last"`` (default; the last real token), an int, a span, ``"all"`` or
            ``"assistant"`` (chats only). See ``probes.positions``.
        batch_size: texts per forward.
        backend: ``"hooks"``, ``"nnsight"`` or ``"transformer_lens"``.
        reduce: for multi-token rules, ``"mean"`` over each text's selected tokens (one row per text) or
            ``"none"`` (one row per selected token, texts in order).
        close_final: chats only; ``False`` leaves a final assistant message open (no end-of-turn), so
            ``"last"`` reads its last token (the paper's read position).
        add_special_tokens: ``None`` = add unless the texts start with BOS.
        dtype: dtype of the returned tensors.
        sort_by_length: batch texts of similar length together (results are returned in input order).
        progress: show a tqdm bar.
        remote: ``True`` runs the nnsight backend on NDIF, ``"local"`` is nnsight's offline simulation
            of that (see ``probes.remote``). An nnsight model or ``probes.remote.RemoteModel`` as
            ``model`` always uses the nnsight backend.

    Returns:
        ``{layer: (n, d_model)}`` (``(n_tokens, d_model)`` with ``reduce="none"``).

    Raises:
        CaptureError: empty input, unknown backend or reduce, NaN/inf activations.
    """
    if backend not in BACKENDS:
        raise CaptureError(f"unknown backend {backend!r}: choose one of {list(BACKENDS)}")
    if reduce not in ("mean", "none"):
        raise CaptureError(f"reduce must be 'mean' or 'none', got {reduce!r}")
    if isinstance(texts, str):
        raise CaptureError("texts must be a list of strings or chats, not a single string")
    items = list(texts)
    if not items:
        raise CaptureError("no texts to capture")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CaptureError(f"batch_size must be a positive int, got {batch_size!r}")
    site = _layers.check_site(site)
    from probes.remote import is_nnsight_model, nnsight_target

    if is_nnsight_model(model) or remote:
        if backend == "transformer_lens":
            raise CaptureError("nnsight and remote models need backend='nnsight' (or the default 'hooks')")
        backend = "nnsight"

    bridge = None
    wrapped = None
    if backend == "transformer_lens":
        bridge = model if _is_bridge(model) else boot_bridge(model, tokenizer)
        hf_model = bridge.original_model if _is_bridge(model) else model
    elif backend == "nnsight":
        wrapped, hf_model, device = nnsight_target(model, tokenizer, remote=remote)
    else:
        hf_model = model
    chosen = _layers.check_layers(hf_model, layers)
    if wrapped is None:
        device = _model_device(bridge if bridge is not None else hf_model)

    need_assistant = isinstance(position, str) and position == "assistant"
    items, add_special_tokens, lengths = _prepare_items(
        tokenizer,
        items,
        close_final=close_final,
        add_special_tokens=add_special_tokens,
        need_assistant=need_assistant,
    )
    order = list(range(len(items)))
    if sort_by_length and len(items) > batch_size:
        order = sorted(order, key=lambda i: lengths[i])
    single = _single_row_rule(position)
    per_layer: dict[int, list[Tensor]] = {layer: [] for layer in chosen}
    counts: list[Tensor] = []
    starts = range(0, len(items), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="capture", unit="batch")
    with torch.inference_mode():
        for start in starts:
            batch_ids = order[start : start + batch_size]
            encoded, assistant = _encode_batch(
                tokenizer,
                [items[i] for i in batch_ids],
                close_final=close_final,
                add_special_tokens=add_special_tokens,
                need_assistant=need_assistant,
            )
            encoded = {key: value.to(device) for key, value in encoded.items()}
            if assistant is not None:
                assistant = assistant.to(device)
            if not single:
                selection = _positions.position_mask(
                    position, encoded["attention_mask"], assistant_mask=assistant
                )
                counts.append(selection.sum(dim=1).cpu())
            if backend == "hooks":
                got = _run_hooks_gathered(hf_model, encoded, chosen, site, position, assistant)
            elif backend == "nnsight":
                got = _run_nnsight(wrapped, hf_model, encoded, chosen, site, position, assistant)
            else:
                got = _run_bridge(bridge, encoded, chosen, site, position, assistant)
            for layer in chosen:
                per_layer[layer].append(got[layer].to(device="cpu", dtype=dtype))
            del got, encoded
            release_freed_memory()

    result: dict[int, Tensor] = {}
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    for layer in chosen:
        stacked = torch.cat(per_layer[layer])
        if single:
            rows = stacked[inverse]
        else:
            row_counts = torch.cat(counts)
            rows = _reduce_rows(stacked, row_counts, reduce)
            if reduce == "mean":
                rows = rows[inverse]
            else:
                # regroup token rows by original text order
                chunks = list(torch.split(stacked, row_counts.tolist()))
                rows = torch.cat([chunks[int(inverse[i])] for i in range(len(order))])
        if not bool(torch.isfinite(rows).all()):
            raise CaptureError(
                f"non-finite activations at layer {layer} ({site}); check the model weights and dtype "
                "(float16 overflows are common: use float32 or bfloat16)"
            )
        result[layer] = rows
    return result
