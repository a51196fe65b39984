"""Probe and steer models that run elsewhere: nnsight 0.8 remote execution on NDIF.

A remote run never ships or downloads weights. The client builds the model's architecture on the
``meta`` device (``TransformersModel(repo_id)`` reads only the config and tokenizer), records the
``with model.trace(...)`` block, and nnsight's ``RemoteBackend`` sends it to NDIF:

- the JSON envelope ``RequestModel(model_key, compress, env)``: ``model_key`` is
  ``"nnsight.modeling.transformers.TransformersModel:{"repo_id": ..., "revision": ..., "task": ...}"``;
  ``env`` carries the attention implementation (and a PEFT adapter id, if any);
- the payload blob: the block's *source* plus the globals/locals it reads (envoys, index tensors,
  directions), cloudpickled and zstd-compressed; modules are referenced by ``Module:<path>`` ids that
  the server resolves against its own copy of the model;
- the headers ``ndif-api-key`` (from ``NDIF_API_KEY``), ``nnsight-version`` and ``python-version``.

The server runs the block and returns the values marked with ``nnsight.save``.

:class:`RemoteModel` wraps an nnsight model so that every ``trace``/``generate`` runs remotely,
with the same API as a local nnsight model: ``steering.nnsight_apply.forward_nnsight`` and
``generate_nnsight`` accept it as is, and :func:`capture` here is ``probes.record.capture`` for it.
``remote="local"`` runs nnsight's local simulation instead (serialize, deserialize with the
toolkit's modules hidden, run in-process): a dry run of exactly what the server would receive.

Example:
    >>> rm = RemoteModel.from_pretrained("meta-llama/Llama-3.1-8B-Instruct")  # doctest: +SKIP
    >>> acts = capture(rm, rm.tokenizer, ["I went north."], layers=[16])  # doctest: +SKIP
    >>> acts[16].shape  # doctest: +SKIP
    torch.Size([1, 4096])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from probes import layers as _layers
from probes import positions as _positions
from probes.positions import Message, Position

API_KEY_ENV = "NDIF_API_KEY"
HOST_ENV = "NDIF_HOST"
DEFAULT_HOST = "https://api.ndif.us"
SIGNUP_URL = "https://login.ndif.us"
# Our packages whose functions a traced block may call (steering.nnsight_apply.steer_step_nnsight,
# operators); shipped by value so the server needs none of them installed.
TOOLKIT_PACKAGES: tuple[str, ...] = ("probes", "steering")

Remote = bool | str


class RemoteConfigError(ValueError):
    """Remote execution is not configured (no API key, bad host, unknown ``remote`` value)."""


class MissingAPIKeyError(RemoteConfigError):
    """No NDIF API key: set ``NDIF_API_KEY`` or pass ``api_key=...``."""


def resolve_api_key(api_key: str | None = None) -> str:
    """The NDIF API key: ``api_key``, else ``$NDIF_API_KEY``, else nnsight's saved config.

    Raises:
        MissingAPIKeyError: none of them is set.
    """
    if api_key:
        return api_key
    from_env = os.environ.get(API_KEY_ENV, "").strip()
    if from_env:
        return from_env
    from nnsight import CONFIG

    if CONFIG.API.APIKEY:
        return str(CONFIG.API.APIKEY)
    raise MissingAPIKeyError(
        f"remote execution needs an NDIF API key: export {API_KEY_ENV}=<your key> (get one at "
        f"{SIGNUP_URL}), or pass api_key=...; use remote='local' for an offline dry run"
    )


def resolve_host(host: str | None = None) -> str:
    """The NDIF host: ``host``, else ``$NDIF_HOST``, else nnsight's config (default ``https://api.ndif.us``)."""
    from nnsight import CONFIG

    chosen = host or os.environ.get(HOST_ENV, "").strip() or CONFIG.API.HOST or DEFAULT_HOST
    if not chosen.startswith(("http://", "https://")):
        raise RemoteConfigError(f"NDIF host must start with http:// or https://, got {chosen!r}")
    return chosen.rstrip("/")


def register_toolkit_modules() -> None:
    """Ship our packages' code by value with remote requests (the NDIF server does not install them)."""
    import importlib

    import nnsight

    for name in TOOLKIT_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:  # pragma: no cover - a partial install
            continue
        nnsight.register(name)


def is_nnsight_model(model: Any) -> bool:
    """An nnsight model wrapper (``TransformersModel``/``LanguageModel``) or a :class:`RemoteModel`."""
    return isinstance(model, RemoteModel) or (
        callable(getattr(model, "trace", None)) and isinstance(getattr(model, "_module", None), nn.Module)
    )


def make_backend(
    lm: Any,
    remote: Remote = True,
    *,
    api_key: str | None = None,
    host: str | None = None,
    blocking: bool = True,
    verbose: bool = False,
) -> Any:
    """The nnsight backend that runs ``lm``'s traces: ``None`` (local), local simulation, or NDIF.

    Args:
        lm: an nnsight ``TransformersModel``/``LanguageModel`` (meta weights are fine).
        remote: ``False`` -> ``None`` (run locally); ``"local"`` -> ``LocalSimulationBackend``;
            ``True`` -> ``RemoteBackend`` to ``host``.
        api_key, host: see :func:`resolve_api_key` / :func:`resolve_host`.
        blocking: wait on a websocket (``True``) or submit and poll (``False``).

    Raises:
        MissingAPIKeyError, RemoteConfigError.
    """
    if remote is False or remote is None:
        return None
    if isinstance(remote, str) and remote == "local":
        from nnsight.intervention.backends.local import LocalSimulationBackend

        register_toolkit_modules()
        return LocalSimulationBackend(lm, verbose=verbose)
    if remote is not True:
        raise RemoteConfigError(
            f"remote must be True (NDIF), 'local' (offline simulation) or False, got {remote!r}; "
            "pass the server with host=..."
        )
    from nnsight.intervention.backends.remote import RemoteBackend

    key = resolve_api_key(api_key)
    url = resolve_host(host)
    register_toolkit_modules()
    return RemoteBackend(
        lm.to_model_key(),
        host=url,
        api_key=key,
        env=lm._remoteable_get_env(),
        blocking=blocking,
        verbose=verbose,
    )


def _identity(wrapped: tuple[Any]) -> Any:
    return wrapped[0]


class RemoteModel:
    """An nnsight model whose ``trace`` and ``generate`` run on NDIF (or a local simulation).

    Every other attribute (``model.layers[...]`` envoys, ``tokenizer``, ``config``, ``output``) is the
    wrapped model's, so code written for a local nnsight model runs unchanged. When a traced block
    refers to it, it pickles as the wrapped model: the API key never travels in the payload.

    Example:
        >>> rm = RemoteModel.from_pretrained("google/gemma-3-27b-it")  # doctest: +SKIP
        >>> with rm.trace("Hello"):  # doctest: +SKIP
        ...     h = rm.model.layers[20].output.save()
    """

    def __init__(
        self,
        lm: Any,
        *,
        remote: Remote = True,
        api_key: str | None = None,
        host: str | None = None,
        blocking: bool = True,
        verbose: bool = False,
    ) -> None:
        if isinstance(lm, RemoteModel):
            lm = lm.lm
        if not is_nnsight_model(lm):
            raise TypeError(
                "RemoteModel wraps an nnsight model: RemoteModel.from_pretrained(repo_id) or "
                f"RemoteModel(nnsight.modeling.transformers.TransformersModel(...)), got {type(lm).__name__}"
            )
        if remote is False or remote is None:
            raise RemoteConfigError("RemoteModel needs remote=True or remote='local'; use the model itself")
        state = self.__dict__
        state["lm"] = lm
        state["remote"] = remote
        state["blocking"] = blocking
        state["verbose"] = verbose
        state["host"] = resolve_host(host) if remote is True else None
        # Checked now, so a missing key fails before any tokenization; re-read on every request.
        state["_api_key"] = resolve_api_key(api_key) if remote is True else None
        state["_explicit_key"] = api_key

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str,
        *,
        revision: str | None = None,
        tokenizer: Any = None,
        remote: Remote = True,
        api_key: str | None = None,
        host: str | None = None,
        **kwargs: Any,
    ) -> RemoteModel:
        """A meta-device ``TransformersModel(repo_id, task="text-generation")`` run remotely.

        Reads only the config and tokenizer (from the Hub, or a local directory holding them);
        the server must host ``repo_id`` (see ``nnsight.ndif.status()``).
        """
        from nnsight.modeling.transformers import TransformersModel

        if tokenizer is not None:
            kwargs["tokenizer"] = tokenizer
        lm = TransformersModel(repo_id, task="text-generation", revision=revision, **kwargs)
        return cls(lm, remote=remote, api_key=api_key, host=host)

    # -- the remote runs --------------------------------------------------------------------------

    def backend(self) -> Any:
        """A fresh backend for one request (API key and host re-resolved)."""
        return make_backend(
            self.lm,
            self.remote,
            api_key=self.__dict__["_explicit_key"],
            host=self.host,
            blocking=self.blocking,
            verbose=self.verbose,
        )

    def trace(self, *inputs: Any, **kwargs: Any) -> Any:
        """``lm.trace(*inputs)`` run remotely: use as ``with rm.trace(batch):``."""
        kwargs.setdefault("backend", self.backend())
        return self.lm.trace(*inputs, **kwargs)

    def generate(self, *inputs: Any, **kwargs: Any) -> Any:
        """``lm.generate(*inputs, **generate_kwargs)`` traced remotely: use as ``with rm.generate(...):``."""
        kwargs.setdefault("backend", self.backend())
        # nnsight's @traceable wrapper looks two frames up for the ``with``; build the tracer the way
        # it does (trace with fn=the bound, unwrapped generate) so the caller's ``with`` is captured.
        method = type(self.lm).generate
        fn = getattr(method, "__wrapped__", method).__get__(self.lm, type(self.lm))
        return self.lm.trace(*inputs, fn=fn, **kwargs)

    # -- identity ---------------------------------------------------------------------------------

    @property
    def model_key(self) -> str:
        """The key naming the checkpoint on the server (``lm.to_model_key()``)."""
        return self.lm.to_model_key()

    @property
    def module(self) -> nn.Module:
        """The wrapped HF module (meta weights for a remote model)."""
        return self.lm._module

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            lm = self.__dict__["lm"]
        except KeyError:
            raise AttributeError(name) from None
        return getattr(lm, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"RemoteModel is read-only; set {name!r} on .lm")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # A traced block that names the model ships the plain nnsight model (no key, no settings).
        return _identity, ((self.lm,),)

    def __repr__(self) -> str:
        where = self.host if self.remote is True else "local simulation"
        return f"RemoteModel({getattr(self.lm, 'repo_id', None)!r} @ {where})"


def nnsight_target(
    model: Any, tokenizer: Any, *, remote: Remote = False
) -> tuple[Any, nn.Module, torch.device]:
    """What an nnsight capture runs on: ``(wrapped, hf_module, input_device)``.

    - an HF module (local): wrapped in ``TransformersModel`` with a *copy* of the tokenizer;
    - an nnsight model or :class:`RemoteModel`: used as is (wrapped in ``RemoteModel`` when
      ``remote`` is set). Inputs stay on the CPU for meta (remote) models; nnsight moves them.

    Raises:
        RemoteConfigError: ``remote`` set for a plain HF module (nothing names a hosted checkpoint).
    """
    import copy

    if is_nnsight_model(model):
        wrapped = (
            RemoteModel(model, remote=remote) if remote and not isinstance(model, RemoteModel) else model
        )
    elif isinstance(model, nn.Module):
        if remote:
            raise RemoteConfigError(
                "remote=... needs an nnsight model naming a hosted checkpoint, e.g. "
                "probes.remote.RemoteModel.from_pretrained('meta-llama/Llama-3.1-8B-Instruct'); "
                f"got a local {type(model).__name__}"
            )
        from nnsight.modeling.transformers import TransformersModel

        wrapped = TransformersModel(_layers.unwrap(model), tokenizer=copy.deepcopy(tokenizer))
    else:
        raise TypeError(f"expected an HF model or an nnsight model, got {type(model).__name__}")
    module = wrapped._module
    try:
        device = next(module.parameters()).device
    except StopIteration:  # pragma: no cover
        device = torch.device("cpu")
    if device.type == "meta":
        device = torch.device("cpu")
    return wrapped, module, device


# --------------------------------------------------------------------------------------------------
# Capture (``probes.record.capture`` with an nnsight or remote model)
# --------------------------------------------------------------------------------------------------


def _envoy(wrapped: Any, module: nn.Module, layer: int, site: str) -> Any:
    target = _layers.site_module(module, layer, site)
    path = next(name for name, sub in module.named_modules() if sub is target)
    envoy = wrapped
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def trace_activations(
    wrapped: Any,
    module: nn.Module,
    encoded: dict[str, Int[Tensor, "batch pos"]],
    layers: Sequence[int],
    site: str = "resid_post",
    position: Position | None = "last",
    assistant_mask: Bool[Tensor, "batch pos"] | None = None,
) -> dict[int, Tensor]:
    """One traced forward of ``wrapped`` saving ``site`` at ``layers`` for the positions of ``position``.

    Same arguments and result as ``probes.record._run_nnsight``; works for local nnsight models and
    :class:`RemoteModel` alike. Only the selected rows are saved (``(batch, d)`` for ``"last"`` and
    ints, ``(n_selected, d)`` otherwise), so a remote request returns little data.
    """
    import nnsight

    mask = encoded["attention_mask"]
    if position is not None and (
        (isinstance(position, str) and position == "last")
        or (isinstance(position, int) and not isinstance(position, bool))
    ):
        index = _positions.position_mask(position, mask).int().argmax(dim=1)
        selection = None
    else:
        index = None
        selection = _positions.position_mask(position, mask, assistant_mask=assistant_mask)
    rows = torch.arange(mask.shape[0])
    envoys = {layer: _envoy(wrapped, module, layer, site) for layer in sorted(layers)}
    with wrapped.trace(dict(encoded)):
        saved = nnsight.save({})
        for layer in envoys:  # ascending: the order the blocks run
            hidden = envoys[layer].output
            if isinstance(hidden, tuple):
                hidden = hidden[0]
            if index is not None:
                saved[layer] = hidden[rows.to(hidden.device), index.to(hidden.device)]
            else:
                saved[layer] = hidden[selection.to(hidden.device)]
    return dict(saved)


def _encode(
    tokenizer: Any, items: Sequence[Any], *, close_final: bool, add_special_tokens: bool | None
) -> tuple[dict[str, Tensor], Tensor | None]:
    chats = [isinstance(item, list | tuple) and (not item or isinstance(item[0], dict)) for item in items]
    if all(chats):
        encoded, assistant, _ = _positions.encode_chats(
            tokenizer, items, close_final=close_final, padding_side="right"
        )
        return encoded, assistant
    if any(chats):
        raise ValueError("mixing plain strings and chat messages in one capture call is not supported")
    return _positions.encode_texts(
        tokenizer, items, add_special_tokens=add_special_tokens, padding_side="right"
    ), None


def capture(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str] | Sequence[Sequence[Message]],
    layers: int | Sequence[int] | str = "all",
    site: str = "resid_post",
    position: Position = "last",
    batch_size: int = 16,
    *,
    remote: Remote = False,
    reduce: str = "mean",
    close_final: bool = True,
    add_special_tokens: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[int, Float[Tensor, "n d_model"]]:
    """``probes.record.capture(..., backend="nnsight")`` for nnsight and remote models.

    ``model`` is a :class:`RemoteModel`, an nnsight model (with ``remote=True``/``"local"`` to run it
    remotely) or a local HF model. Right padding, one row per text (``reduce="mean"`` over multi-token
    rules) or per selected token (``reduce="none"``), in input order, float32 on the CPU.

    Example:
        >>> acts = capture(RemoteModel.from_pretrained("google/gemma-2-9b-it"), tok, texts,  # doctest: +SKIP
        ...                layers=[20], position="last")
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings or chats, not a single string")
    items = list(texts)
    if not items:
        raise ValueError("no texts to capture")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if reduce not in ("mean", "none"):
        raise ValueError(f"reduce must be 'mean' or 'none', got {reduce!r}")
    site = _layers.check_site(site)
    wrapped, module, device = nnsight_target(model, tokenizer, remote=remote)
    chosen = _layers.check_layers(module, layers)
    single = (isinstance(position, str) and position == "last") or (
        isinstance(position, int) and not isinstance(position, bool)
    )
    per_layer: dict[int, list[Tensor]] = {layer: [] for layer in chosen}
    for start in range(0, len(items), batch_size):
        encoded, assistant = _encode(
            tokenizer,
            items[start : start + batch_size],
            close_final=close_final,
            add_special_tokens=add_special_tokens,
        )
        if isinstance(position, str) and position == "assistant" and assistant is None:
            raise ValueError("position='assistant' needs chats (lists of {'role', 'content'} messages)")
        encoded = {key: value.to(device) for key, value in encoded.items()}
        got = trace_activations(wrapped, module, encoded, chosen, site, position, assistant)
        counts = None
        if not single:
            counts = _positions.position_mask(
                position, encoded["attention_mask"], assistant_mask=assistant
            ).sum(1)
        for layer in chosen:
            rows = got[layer].to(device="cpu", dtype=dtype)
            if counts is not None and reduce == "mean":
                rows = torch.stack([chunk.mean(0) for chunk in torch.split(rows, counts.tolist())])
            per_layer[layer].append(rows)
    result = {layer: torch.cat(chunks) for layer, chunks in per_layer.items()}
    for layer, rows in result.items():
        if not bool(torch.isfinite(rows).all()):
            raise ValueError(f"non-finite activations at layer {layer} ({site})")
    return result
