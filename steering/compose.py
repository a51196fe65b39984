"""Several vectors at once: ``combine`` sums scaled ConceptVectors into one, with provenance.

``combine([(v_gold, 2.0), (sentiment, -1.0)])`` is ``2·v_Gold − sentiment`` at every layer either has (a vector
present at only some layers contributes only there, so per-layer composition is the same call with vectors at
different layers). The result is a ConceptVector whose ``metadata["combined_from"]`` holds every parent's
provenance, and ``steering.apply.apply(model, combined, alpha=1.0)`` steers with all of them in one hook per
layer. Vector arithmetic (``v_gold - v_mold``) carries both parents the same way.

Example:
    >>> import torch
    >>> from probes.concept_vector import ConceptVector
    >>> a = ConceptVector({0: torch.ones(2)}, concept="a")
    >>> b = ConceptVector({0: torch.ones(2), 1: torch.ones(2)}, concept="b")
    >>> c = combine([(a, 2.0), (b, -1.0)])
    >>> c[0].tolist(), c[1].tolist(), c.concept
    ([1.0, 1.0], [-1.0, -1.0], '(2.0*(a))+(-1.0*(b))')
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from probes.concept_vector import ConceptVector


def combine(terms: Sequence[tuple[ConceptVector, float]]) -> ConceptVector:
    """``Σ α_i · v_i`` over the union of the vectors' layers, its provenance listing every parent.

    Raises:
        ValueError: no terms, or a non-finite coefficient.
        probes.concept_vector.ConceptVectorError: vectors of different widths or sites.
    """
    if not terms:
        raise ValueError("combine needs at least one (vector, alpha) term")
    total: ConceptVector | None = None
    for vector, alpha in terms:
        if not isinstance(vector, ConceptVector):
            raise TypeError(f"combine takes (ConceptVector, alpha) pairs; got {type(vector).__name__}")
        if isinstance(alpha, bool) or not math.isfinite(float(alpha)):
            raise ValueError(f"alpha must be a finite number; got {alpha!r}")
        scaled = vector * float(alpha)
        total = scaled if total is None else total + scaled
    assert total is not None
    return total
