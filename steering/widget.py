"""A notebook slider to feel a vector's effect: pick a vector, a layer and α, see the steered completion and its
self-report sentiment score next to the unsteered one.

:func:`compare_steered` is the computation (usable without a notebook, and tested); :func:`steering_widget`
wires it to ipywidgets (a dropdown of vectors, a layer slider over the layers the chosen vector has, an α
slider, a prompt box and a button). Greedy decoding by default, so the same settings give the same texts.

Example:
    >>> from training import load_trained  # doctest: +SKIP
    >>> model, tok = load_model("smollm2-135m-instruct")  # doctest: +SKIP
    >>> steering_widget(model, tok, {"v_Gold": v["Gold"], "u_Gold": u["Gold"]})  # doctest: +SKIP
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from steering.evals.sentiment import vader
from steering.generate import Steering, generate_responses

DEFAULT_PROMPT = "How are you feeling right now?"


@dataclass(frozen=True)
class SteeredComparison:
    """One prompt answered with and without steering, each with its VADER self-report score (−5..5)."""

    prompt: str
    vector: str
    layer: int
    alpha: float
    unsteered: str
    steered: str
    unsteered_score: float
    steered_score: float

    def html(self) -> str:
        """Side by side, for a notebook output."""

        def cell(title: str, text: str, score: float) -> str:
            return (
                f"<td style='vertical-align:top;padding:6px;width:50%'><b>{html.escape(title)}</b> "
                f"(sentiment {score:+.2f})<br>{html.escape(text)}</td>"
            )

        steered = f"{self.vector} at layer {self.layer}, α = {self.alpha:+g}"
        return (
            f"<div><i>{html.escape(self.prompt)}</i><table style='width:100%'><tr>"
            + cell("unsteered", self.unsteered, self.unsteered_score)
            + cell(steered, self.steered, self.steered_score)
            + "</tr></table></div>"
        )


def compare_steered(
    model: nn.Module,
    tokenizer: Any,
    vector: Any,
    *,
    name: str = "vector",
    layer: int,
    alpha: float,
    prompt: str = DEFAULT_PROMPT,
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    seed: int = 0,
) -> SteeredComparison:
    """Generate the answer to ``prompt`` without and with ``alpha · vector[layer]`` at the assistant tokens."""
    plain = generate_responses(model, tokenizer, [prompt], max_new_tokens=max_new_tokens, temperature=temperature,
                               seed=seed)[0][0]  # fmt: skip
    steering = Steering(directions=vector, layers=[layer], alpha=float(alpha))
    steered = generate_responses(model, tokenizer, [prompt], max_new_tokens=max_new_tokens,
                                 temperature=temperature, seed=seed, steering=steering)[0][0]  # fmt: skip
    score = vader()
    a, b = score([prompt, prompt], [plain, steered])
    return SteeredComparison(prompt, name, int(layer), float(alpha), plain, steered, float(a), float(b))


def _layers_of(vector: Any) -> list[int]:
    layers = getattr(vector, "layers", None)
    if layers is None and isinstance(vector, Mapping):
        layers = sorted(vector)
    if not layers:
        raise ValueError("each vector needs per-layer directions (a ConceptVector or {layer: Tensor})")
    return [int(x) for x in layers]


def steering_widget(
    model: nn.Module,
    tokenizer: Any,
    vectors: Mapping[str, Any],
    *,
    prompt: str = DEFAULT_PROMPT,
    alpha_range: tuple[float, float] = (-8.0, 8.0),
    max_new_tokens: int = 40,
) -> Any:
    """An ipywidgets box: vector, layer and α controls, a prompt, a button; the comparison appears below it.

    The box's ``.run()`` attribute runs the current settings (what the button does), returning the
    :class:`SteeredComparison` it shows.
    """
    import ipywidgets as widgets
    from IPython.display import HTML, display

    if not vectors:
        raise ValueError("steering_widget needs at least one vector")
    names = list(vectors)
    first_layers = _layers_of(vectors[names[0]])
    choose = widgets.Dropdown(options=names, value=names[0], description="vector")
    layer = widgets.SelectionSlider(options=first_layers, value=first_layers[len(first_layers) // 2],
                                    description="layer")  # fmt: skip
    alpha = widgets.FloatSlider(value=4.0, min=alpha_range[0], max=alpha_range[1], step=0.5, description="α")
    text = widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="90%"))
    button = widgets.Button(description="generate", button_style="primary")
    out = widgets.Output()

    def on_vector(change: Any) -> None:
        options = _layers_of(vectors[change["new"]])
        layer.options = options
        layer.value = options[len(options) // 2]

    def run(*_: Any) -> SteeredComparison:
        result = compare_steered(model, tokenizer, vectors[choose.value], name=choose.value, layer=layer.value,
                                 alpha=alpha.value, prompt=text.value, max_new_tokens=max_new_tokens)  # fmt: skip
        out.clear_output()
        with out:
            display(HTML(result.html()))
        return result

    choose.observe(on_vector, names="value")
    button.on_click(run)
    box = widgets.VBox([widgets.HBox([choose, layer, alpha]), text, button, out])
    box.run = run  # type: ignore[attr-defined]
    return box
