"""probes.layers: blocks, sites and names resolve correctly on tiny Llama and Gemma3 models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from probes import layers as L
from probes.models import tiny_model


def tiny_llama(n_layers: int = 2) -> nn.Module:
    return tiny_model("llama", n_layers=n_layers, d_mlp=128, vocab_size=97, max_position_embeddings=128)[0]


def tiny_gemma3(n_layers: int = 3) -> nn.Module:
    model = tiny_model(
        "gemma3",
        n_layers=n_layers,
        d_mlp=128,
        vocab_size=97,
        max_position_embeddings=128,
        config_overrides={"sliding_window": 4},
    )[0]
    # Random RMSNorm weights (init is zero = identity), so a wrong norm choice shows up in the numbers.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.5)
    return model


@pytest.fixture(params=["llama", "gemma3"])
def model(request) -> nn.Module:
    return tiny_llama() if request.param == "llama" else tiny_gemma3()


def capture_sites(model: nn.Module, ids: torch.Tensor) -> tuple[dict, object]:
    got: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for layer in range(L.n_layers(model)):
        for site in L.SITES:
            module = L.site_module(model, layer, site)

            def hook(mod, args, out, key=(layer, site)):
                got[key] = (out[0] if isinstance(out, tuple) else out).detach().clone()

            handles.append(module.register_forward_hook(hook))
    try:
        out = model(ids, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    return got, out


def test_blocks_and_sizes(model):
    assert L.n_layers(model) == len(model.model.layers)
    assert all(a is b for a, b in zip(L.blocks(model), model.model.layers, strict=True))
    assert L.d_model(model) == 64
    assert L.layer_template(model) == "model.layers.{num}"


def test_resid_post_is_block_output_and_matches_hidden_states(model):
    ids = torch.randint(0, 97, (2, 6))
    got, out = capture_sites(model, ids)
    n = L.n_layers(model)
    for layer in range(n - 1):
        assert torch.equal(got[(layer, "resid_post")], out.hidden_states[layer + 1])
    # HF stores the last hidden state after the final norm; resid_post is the raw block output.
    last = L.final_norm(model)(got[(n - 1, "resid_post")])
    torch.testing.assert_close(last, out.hidden_states[n], rtol=0, atol=1e-6)


def test_attn_and_mlp_out_are_what_is_added_to_the_residual(model):
    ids = torch.randint(0, 97, (2, 6))
    got, out = capture_sites(model, ids)
    previous = out.hidden_states[0]
    for layer in range(L.n_layers(model)):
        rebuilt = previous + got[(layer, "attn_out")] + got[(layer, "mlp_out")]
        torch.testing.assert_close(rebuilt, got[(layer, "resid_post")], rtol=1e-5, atol=1e-5)
        previous = got[(layer, "resid_post")]


def test_gemma3_sites_use_post_norms():
    model = tiny_gemma3()
    block = model.model.layers[1]
    assert L.site_module(model, 1, "attn_out") is block.post_attention_layernorm
    assert L.site_module(model, 1, "mlp_out") is block.post_feedforward_layernorm
    llama = tiny_llama()
    assert L.site_module(llama, 1, "attn_out") is llama.model.layers[1].self_attn
    assert L.site_module(llama, 1, "mlp_out") is llama.model.layers[1].mlp


def test_check_layer_normalises_and_errors(model):
    n = L.n_layers(model)
    assert L.check_layer(model, -1) == n - 1
    assert L.check_layer(model, -n) == 0
    with pytest.raises(IndexError, match=rf"0\.\.{n - 1}"):
        L.check_layer(model, n)
    with pytest.raises(IndexError, match="valid layers"):
        L.check_layer(model, -n - 1)
    with pytest.raises(TypeError):
        L.check_layer(model, 1.5)  # type: ignore[arg-type]
    assert L.check_layers(model, "all") == list(range(n))
    assert L.check_layers(model, [-1, 0, 0]) == [0, n - 1]
    with pytest.raises(ValueError):
        L.check_layers(model, "some")


def test_hook_names_round_trip():
    for layer in (0, 7, 35):
        for site in L.SITES:
            assert L.parse_hook_name(L.hook_name(layer, site)) == (layer, site)
    assert L.hook_name(3) == "blocks.3.hook_resid_post"
    with pytest.raises(ValueError, match="unknown site"):
        L.hook_name(0, "resid_pre")
    with pytest.raises(ValueError):
        L.parse_hook_name("blocks.x.hook_resid_post")
    with pytest.raises(ValueError):
        L.hook_name(-1)


def test_unembed_reproduces_logits(model):
    ids = torch.randint(0, 97, (1, 5))
    out = model(ids, output_hidden_states=True)
    w_u = L.unembed(model)
    assert w_u.shape == (64, 97)
    logits = out.hidden_states[-1] @ w_u
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    torch.testing.assert_close(logits, out.logits, rtol=1e-5, atol=1e-5)


def test_peft_wrapped_model_resolves_to_base():
    peft = pytest.importorskip("peft")
    base = tiny_llama()
    wrapped = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert L.unwrap(wrapped) is base
    assert L.n_layers(wrapped) == 2
    assert L.site_module(wrapped, 0, "resid_post") is base.model.layers[0]
    assert L.model_family(wrapped) == L.model_family(base) == "llama/L2/d64"


def test_unknown_architecture_names_the_override():
    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])

    weird = Weird()
    with pytest.raises(L.LayerResolutionError, match=L.LAYER_TEMPLATE_ATTR):
        L.blocks(weird)
    weird.welfare_axis_layer_template = "stack.{num}"
    assert L.n_layers(weird) == 3
    weird.welfare_axis_layer_template = "nothing.{num}"
    with pytest.raises(L.LayerResolutionError, match="matches no modules"):
        L.blocks(weird)
