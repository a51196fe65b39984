"""Steering operators: how a direction changes a block's output at the steered positions.

An operator is a plain callable ``op(hidden, direction, alpha) -> new_hidden`` built by a factory
(``add()``, ``ablate()``, ``ablate_then_add()``), so adding a method is one function and one test.
:func:`steering.apply.apply` calls it on the block output restricted to the steered positions; the
positions it does not steer are left bit-for-bit untouched.

Example:
    >>> import torch
    >>> h = torch.tensor([[[1.0, 2.0]]])
    >>> v = torch.tensor([0.0, 1.0])
    >>> add()(h, v, 3.0)
    tensor([[[1., 5.]]])
    >>> ablate()(h, v, 3.0)
    tensor([[[1., 0.]]])
    >>> ablate_then_add()(h, v, 3.0)
    tensor([[[1., 3.]]])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

Operator = Callable[[Float[Tensor, "*batch d_model"], Float[Tensor, " d_model"], float], Tensor]
"""``op(hidden, direction, alpha) -> new hidden`` (same shape and dtype as ``hidden``)."""


def _unit(direction: Tensor) -> Tensor:
    # at least fp32 for the norm (bf16/fp16 directions), full precision for fp64
    norm = torch.linalg.vector_norm(direction.to(torch.promote_types(direction.dtype, torch.float32)))
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError(
            f"cannot ablate along a direction with norm {float(norm)}: it must be finite and > 0"
        )
    return direction / norm.to(direction.dtype)


def add() -> Operator:
    """Additive steering: ``h + alpha * v`` (the paper's intervention; ``alpha=0`` is the identity)."""

    # Each closure is *defined* under its public name: nnsight 0.8 ships functions to NDIF by source and
    # finds them again by ``__name__``, so a closure renamed after definition cannot be loaded remotely.

    def add(hidden: Tensor, direction: Tensor, alpha: float) -> Tensor:
        return hidden + alpha * direction

    add.__qualname__ = "add"
    return add


def ablate() -> Operator:
    """Directional ablation: project ``h`` onto the complement of ``v``: ``h - (h·û) û``. ``alpha`` is ignored."""

    def ablate(hidden: Tensor, direction: Tensor, alpha: float) -> Tensor:
        unit = _unit(direction)
        return hidden - (hidden @ unit).unsqueeze(-1) * unit

    ablate.__qualname__ = "ablate"
    return ablate


def ablate_then_add() -> Operator:
    """Ablate ``v`` then add ``alpha * v``: the component along ``v`` is set to exactly ``alpha * ‖v‖``."""

    def ablate_then_add(hidden: Tensor, direction: Tensor, alpha: float) -> Tensor:
        unit = _unit(direction)
        return hidden - (hidden @ unit).unsqueeze(-1) * unit + alpha * direction

    ablate_then_add.__qualname__ = "ablate_then_add"
    return ablate_then_add


def is_additive(operator: Operator) -> bool:
    """Whether ``operator`` is :func:`add`'s (the one whose direction may differ per row of a batch)."""
    return getattr(operator, "__name__", None) == "add"


OPERATORS: dict[str, Callable[[], Operator]] = {
    "add": add,
    "ablate": ablate,
    "ablate_then_add": ablate_then_add,
}


def operator_by_name(name: str) -> Operator:
    """The operator a factory name builds (``"add"``, ``"ablate"``, ``"ablate_then_add"``)."""
    if name not in OPERATORS:
        raise ValueError(f"unknown steering operator {name!r}: choose one of {sorted(OPERATORS)}")
    return OPERATORS[name]()


def _norm_at(vector: Any, layer: int | None) -> float:
    """Euclidean norm of a direction given as a tensor, a ``{layer: tensor}`` dict or a ConceptVector."""
    if isinstance(vector, Tensor):
        return float(torch.linalg.vector_norm(vector.float()))
    directions = getattr(vector, "directions", vector)
    if not isinstance(directions, Mapping):
        raise TypeError(
            f"expected a Tensor, a dict layer -> Tensor or a ConceptVector, got {type(vector).__name__}"
        )
    if layer is None:
        raise ValueError("pass layer=... to pick which layer's direction to norm-match")
    if layer not in directions:
        raise KeyError(f"layer {layer} not in the vector's layers {sorted(directions)}")
    return float(torch.linalg.vector_norm(directions[layer].float()))


def norm_matched_alpha(v: Any, u: Any, alpha: float, layer: int | None = None) -> float:
    """The coefficient ``beta`` that gives a control ``u`` the same push as ``alpha * v``: ``beta‖u‖ = alpha‖v‖``.

    Args:
        v: the trained direction (Tensor, ``{layer: Tensor}`` or ConceptVector).
        u: the control direction (same kinds).
        alpha: the coefficient used with ``v``.
        layer: which layer's norms to match (needed for dicts / ConceptVectors).

    Example:
        >>> import torch
        >>> norm_matched_alpha(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 10.0]), 2.0)
        1.0
    """
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha!r}")
    norm_v, norm_u = _norm_at(v, layer), _norm_at(u, layer)
    if norm_u == 0 or not math.isfinite(norm_u):
        raise ValueError(f"control direction norm is {norm_u}: it must be finite and > 0")
    return alpha * norm_v / norm_u


def norm_matched(u: Tensor, v: Tensor) -> Tensor:
    """``u`` rescaled to the norm of ``v`` (so that the same ``alpha`` gives the same push)."""
    norm_u = torch.linalg.vector_norm(u.float())
    if norm_u == 0:
        raise ValueError("cannot rescale a zero vector")
    return u * (torch.linalg.vector_norm(v.float()) / norm_u).to(u.dtype)


class NamedOperator:
    """A steering operator referred to by its factory name, so it survives shipping to NDIF.

    ``steering.operators.add()`` returns a closure renamed to ``"add"``; nnsight 0.8 rebuilds shipped
    functions by looking up ``__name__`` in their source, so the renamed closure fails to load on the
    server ("Could not find function 'add'"). This wrapper pickles as the name and rebuilds the
    operator there. Use :func:`portable_operator`.
    """

    def __init__(self, name: str) -> None:
        if name not in OPERATORS:
            raise ValueError(f"unknown steering operator {name!r}: choose one of {sorted(OPERATORS)}")
        self.name = name
        self._op = OPERATORS[name]()  # a module global: shipped by value, no import on the server

    def __call__(self, hidden: Tensor, direction: Tensor, alpha: float) -> Tensor:
        return self._op(hidden, direction, alpha)

    def __getstate__(self) -> dict[str, str]:
        return {"name": self.name}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(state["name"])

    def __repr__(self) -> str:
        return f"NamedOperator({self.name!r})"


def portable_operator(operator: Any = None) -> Any:
    """``operator`` (default ``add()``) in a form that can be shipped in a remote request.

    Operators built by ``steering.operators`` factories become :class:`NamedOperator`; anything
    else is returned unchanged (a module-level function ships fine).

    Example:
        >>> from steering.operators import ablate
        >>> portable_operator(ablate())
        NamedOperator('ablate')
    """
    if operator is None:
        return NamedOperator("add")
    name = getattr(operator, "__name__", None)
    if name in OPERATORS and getattr(operator, "__module__", None) == "steering.operators":
        return NamedOperator(name)
    return operator
