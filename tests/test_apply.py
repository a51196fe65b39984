"""Exact-math tests of steering.apply on tiny randomly initialised Llama and Gemma3 models."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import Tensor, nn

from probes.layers import blocks
from probes.models import tiny_model
from steering.apply import SteeringError, apply, prompt_position_mask
from steering.operators import ablate, ablate_then_add

D_MODEL = 32
N_LAYERS = 3
VOCAB = 97


def _llama() -> nn.Module:
    return tiny_model("llama", n_layers=N_LAYERS, d_model=D_MODEL, d_mlp=64, vocab_size=VOCAB)[0]


def _gemma() -> nn.Module:
    types = ["sliding_attention", "full_attention", "sliding_attention"]
    overrides = {"sliding_window": 4, "layer_types": types}
    return tiny_model(
        "gemma3", n_layers=N_LAYERS, d_model=D_MODEL, d_mlp=64, vocab_size=VOCAB, config_overrides=overrides
    )[0]


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model(request: pytest.FixtureRequest) -> nn.Module:
    return _llama() if request.param == "llama" else _gemma()


@contextmanager
def capture_blocks(model: nn.Module) -> Iterator[list[Tensor]]:
    """Raw outputs of every decoder block for one forward (test helper)."""
    outs: list[Tensor] = [None] * N_LAYERS  # type: ignore[list-item]
    handles = []
    for i, block in enumerate(blocks(model)):

        def hook(module, args, output, i=i):
            outs[i] = (output[0] if isinstance(output, tuple) else output).detach().clone()

        handles.append(block.register_forward_hook(hook))
    try:
        yield outs
    finally:
        for h in handles:
            h.remove()


def _hook_counts(model: nn.Module) -> list[tuple[int, int, int]]:
    return [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._forward_hooks_with_kwargs))
        for m in model.modules()
    ]


IDS = torch.tensor([[5, 17, 33, 8, 41, 9, 12, 60], [7, 7, 21, 90, 3, 44, 15, 16]])


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_apply_patches_only_requested_layer_and_positions(model: nn.Module, layer: int) -> None:
    torch.manual_seed(1)
    v = torch.randn(D_MODEL)
    alpha = 3.0
    mask = torch.zeros_like(IDS, dtype=torch.bool)
    mask[0, 3:6] = True
    mask[1, 5] = True
    with torch.no_grad(), capture_blocks(model) as base:
        base_logits = model(IDS).logits
    with torch.no_grad(), capture_blocks(model) as steered:
        with apply(model, v, layers=layer, alpha=alpha, positions=mask) as handle:
            steered_logits = model(IDS).logits
    assert torch.equal(handle.prompt_mask, mask)
    for i in range(layer):
        assert torch.equal(steered[i], base[i]), f"block {i} before the steered layer changed"
    expected = torch.where(mask.unsqueeze(-1), base[layer] + alpha * v, base[layer])
    assert torch.equal(steered[layer], expected)
    # unmasked positions of the steered block are bit-for-bit unchanged
    assert torch.equal(steered[layer][~mask], base[layer][~mask])
    # causality: positions before the first steered token of a row are untouched everywhere after
    for row, first in ((0, 3), (1, 5)):
        for i in range(layer + 1, N_LAYERS):
            assert torch.equal(steered[i][row, :first], base[i][row, :first])
            assert not torch.allclose(steered[i][row, first:], base[i][row, first:])
        assert torch.equal(steered_logits[row, :first], base_logits[row, :first])


def test_apply_multiple_layers_with_per_layer_alpha(model: nn.Module) -> None:
    torch.manual_seed(2)
    vectors = {0: torch.randn(D_MODEL), 2: torch.randn(D_MODEL)}
    with torch.no_grad(), capture_blocks(model) as base:
        model(IDS)
    with torch.no_grad(), capture_blocks(model) as steered:
        with apply(model, vectors, alpha={0: 1.5, 2: -2.0}, positions="all") as handle:
            model(IDS)
    assert handle.layers == [0, 2]
    assert torch.equal(steered[0], base[0] + 1.5 * vectors[0])
    # block 2's input changed, so compare against a recomputation with block 0 steered only
    with torch.no_grad(), capture_blocks(model) as only_first:
        with apply(model, vectors, layers=[0], alpha=1.5, positions="all"):
            model(IDS)
    assert torch.equal(steered[2], only_first[2] + -2.0 * vectors[2])


def test_alpha_zero_is_bitwise_identical(model: nn.Module) -> None:
    v = torch.randn(D_MODEL) * 10
    with torch.no_grad():
        base = model(IDS).logits
        base_gen = model.generate(IDS, max_new_tokens=6, do_sample=False, pad_token_id=0)
        with apply(model, v, layers=[0, 1, 2], alpha=0.0, positions="all"):
            steered = model(IDS).logits
            steered_gen = model.generate(IDS, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(base, steered)
    assert torch.equal(base_gen, steered_gen)


def test_context_exit_restores_model_exactly(model: nn.Module) -> None:
    v = torch.randn(D_MODEL) * 10
    before_hooks = _hook_counts(model)
    with torch.no_grad():
        base = model(IDS).logits
        with apply(model, v, layers=[1], alpha=4.0, positions="all"):
            assert _hook_counts(model) != before_hooks
            assert not torch.equal(model(IDS).logits, base)
        assert _hook_counts(model) == before_hooks
        assert torch.equal(model(IDS).logits, base)
        with pytest.raises(RuntimeError, match="boom"):
            with apply(model, v, layers=[1], alpha=4.0, positions="all"):
                raise RuntimeError("boom")
        assert _hook_counts(model) == before_hooks
        assert torch.equal(model(IDS).logits, base)


def test_exit_removes_only_own_handles(model: nn.Module) -> None:
    seen: list[int] = []
    foreign = blocks(model)[1].register_forward_hook(lambda m, a, o: seen.append(1))
    try:
        with apply(model, torch.randn(D_MODEL), layers=[1], alpha=1.0, positions="all"):
            pass
        with torch.no_grad():
            model(IDS)
        assert seen == [1]
    finally:
        foreign.remove()


@pytest.mark.parametrize("operator", [ablate(), ablate_then_add()])
def test_ablation_leaves_block_output_orthogonal(model: nn.Module, operator) -> None:
    torch.manual_seed(3)
    v = torch.randn(D_MODEL)
    unit = v / v.norm()
    alpha = 2.0
    with torch.no_grad(), capture_blocks(model) as base:
        model(IDS)
    with torch.no_grad(), capture_blocks(model) as steered:
        with apply(model, v, layers=1, alpha=alpha, positions="all", operator=operator):
            model(IDS)
    target = 0.0 if operator.__name__ == "ablate" else alpha * float(v.norm())
    dots = steered[1] @ unit
    norms = steered[1].norm(dim=-1)
    assert ((dots - target).abs() / norms).max() < 1e-5
    assert (base[1] @ unit).abs().max() > 1e-2  # the direction was present before


def _left_pad(rows: list[list[int]], pad: int = 0) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_batched_equals_unbatched_with_padding(model: nn.Module) -> None:
    torch.manual_seed(4)
    v = torch.randn(D_MODEL) * 3
    rows = [[5, 17, 33, 8, 41, 9], [7, 21, 90], [11, 12, 13, 14]]
    ids, attn = _left_pad(rows)
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), apply(model, v, layers=[1], alpha=2.0, positions="all") as handle:
        batched = model(input_ids=ids, attention_mask=attn, position_ids=position_ids).logits
        assert torch.equal(handle.prompt_mask, attn.bool())  # padding is never steered
        for i, row in enumerate(rows):
            single = model(torch.tensor([row])).logits[0]
            assert torch.allclose(batched[i, -len(row) :], single, atol=1e-5, rtol=1e-5)
        gen = model.generate(
            input_ids=ids, attention_mask=attn, max_new_tokens=5, do_sample=False, pad_token_id=0
        )
        for i, row in enumerate(rows):
            single = model.generate(torch.tensor([row]), max_new_tokens=5, do_sample=False, pad_token_id=0)
            assert torch.equal(gen[i, ids.shape[1] :], single[0, len(row) :])


def test_generate_kv_cache_equals_recomputation(model: nn.Module) -> None:
    torch.manual_seed(5)
    v = torch.randn(D_MODEL) * 4
    prompt_mask = torch.zeros_like(IDS, dtype=torch.bool)
    prompt_mask[:, 5:] = True  # e.g. the assistant header of a chat prompt
    new = 6
    kwargs = dict(max_new_tokens=new, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        plain = model.generate(IDS, **kwargs)
        with apply(model, v, layers=[1], alpha=3.0, positions=prompt_mask):
            cached = model.generate(IDS, use_cache=True, **kwargs)
            uncached = model.generate(IDS, use_cache=False, **kwargs)
            # one forward over prompt + generated tokens, with every generated token steered
            full_mask = torch.cat([prompt_mask, torch.ones(2, new, dtype=torch.bool)], dim=1)
        with apply(model, v, layers=[1], alpha=3.0, positions=full_mask):
            logits = model(cached).logits
    assert not torch.equal(cached, plain), "steering should change greedy tokens at this alpha"
    assert torch.equal(cached, uncached)
    recomputed = logits[:, IDS.shape[1] - 1 : -1].argmax(-1)
    assert torch.equal(recomputed, cached[:, IDS.shape[1] :])


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
@pytest.mark.parametrize("keyword", ["cache", "past_key_values"])
def test_a_cached_call_without_a_mask_is_a_decoding_step(model: nn.Module, keyword: str) -> None:
    # generate (transformers >= 5.24) decodes with the cache under `cache` and no attention mask when no
    # row is padded; the deprecated `past_key_values` must still be read. A step that is not recognised
    # as a decoding step would look like a new prompt and go unsteered under positions="generated".
    v = torch.randn(D_MODEL) * 8
    last = torch.zeros_like(IDS, dtype=torch.bool)
    last[:, -1] = True
    with torch.no_grad():
        with apply(model, v, layers=[0], alpha=4.0, positions="generated") as handle:
            prefix = model(IDS[:, :-1], use_cache=True)
            step = model(IDS[:, -1:], use_cache=True, **{keyword: prefix.cache})
        with apply(model, v, layers=[0], alpha=4.0, positions=last):
            expected = model(IDS).logits[:, -1]
        unsteered = model(IDS).logits[:, -1]
    assert handle.n_calls == 2 and not handle.prompt_mask.any()
    torch.testing.assert_close(step.logits[:, -1], expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(step.logits[:, -1], unsteered, atol=1e-3)


def test_generated_rule_leaves_prompt_pass_alone(model: nn.Module) -> None:
    v = torch.randn(D_MODEL) * 8
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        base_logits = model(IDS).logits
        plain = model.generate(IDS, **kwargs)
        with apply(model, v, layers=[0], alpha=4.0, positions="generated") as handle:
            assert torch.equal(model(IDS).logits, base_logits)  # nothing generated in a forward pass
            steered = model.generate(IDS, **kwargs)
            steered_nocache = model.generate(IDS, use_cache=False, **kwargs)
    assert not handle.prompt_mask.any()
    start = IDS.shape[1]
    # the first new token comes from the unsteered prompt pass
    assert torch.equal(steered[:, start], plain[:, start])
    assert not torch.equal(steered, plain)
    assert torch.equal(steered, steered_nocache)


def test_prompt_position_mask_rules() -> None:
    ids = torch.tensor([[0, 0, 4, 5], [3, 4, 5, 6]])
    attn = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(prompt_position_mask("all", ids, attn), attn.bool())
    assert not prompt_position_mask("generated", ids, attn).any()
    custom = torch.tensor([[True, True, True, False], [False, True, False, True]])
    assert torch.equal(prompt_position_mask(custom, ids, attn), custom & attn.bool())
    short = torch.tensor([[False, False], [True, False]])
    assert torch.equal(
        prompt_position_mask(short, ids, attn),
        torch.tensor([[False, False, True, True], [True, False, True, True]]),
    )


def test_bad_inputs_raise_clear_errors(model: nn.Module) -> None:
    v = torch.randn(D_MODEL)
    with pytest.raises(ValueError, match="unknown position rule 'prompt'"):
        with apply(model, v, layers=0, alpha=1.0, positions="prompt"):
            pass
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="alpha must be finite"):
            with apply(model, v, layers=0, alpha=bad, positions="all"):
                pass
    with pytest.raises(IndexError, match="valid layers are 0..2"):
        with apply(model, v, layers=7, alpha=1.0, positions="all"):
            pass
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        with apply(model, torch.randn(5), layers=0, alpha=1.0, positions="all"):
            pass
    with pytest.raises(ValueError, match="tokenizer"):
        with apply(model, v, layers=0, alpha=1.0):
            pass
    with pytest.raises(KeyError, match="no direction for layer 1"):
        with apply(model, {0: v}, layers=[1], alpha=1.0, positions="all"):
            pass
    with pytest.raises(ValueError, match="bool Tensor"):
        with apply(model, v, layers=0, alpha=1.0, positions=torch.ones(2, 8)):
            pass
    with pytest.raises(ValueError, match="non-finite"):
        with apply(model, torch.full((D_MODEL,), math.nan), layers=0, alpha=1.0, positions="all"):
            pass
    # a mask for the wrong batch is caught at call time, and the hooks are still removed
    before = _hook_counts(model)
    with pytest.raises(ValueError, match="batch"):
        with apply(model, v, layers=0, alpha=1.0, positions=torch.ones(3, 8, dtype=torch.bool)):
            model(IDS)
    assert _hook_counts(model) == before


def test_block_called_outside_model_forward_raises() -> None:
    model = _llama()
    hidden = torch.randn(1, 3, D_MODEL)
    rotary = model.model.rotary_emb(hidden, torch.arange(3)[None])
    with apply(model, torch.randn(D_MODEL), layers=0, alpha=1.0, positions="all"):
        with pytest.raises(SteeringError, match="without the model's forward"):
            model.model.layers[0](hidden, position_embeddings=rotary)


# ----------------------------------------------------------------------------------------------------------
# The paper's "assistant" rule on real chat templates, and the nnsight backend


CHAT = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Yo"},
    {"role": "user", "content": "Again"},
]

EXPECTED_STEERED = {
    "llama": [
        "<|im_start|>",
        "ass",
        "istant",
        "Ċ",
        "Y",
        "o",
        "<|im_end|>",
        "<|im_start|>",
        "ass",
        "istant",
        "Ċ",
    ],
    "gemma3": ["<start_of_turn>", "model", "\n", "Yo", "<end_of_turn>", "<start_of_turn>", "model", "\n"],
}


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def chat_model(request: pytest.FixtureRequest):
    from probes.models import tiny_model

    model, tok = tiny_model(request.param, seed=0, n_layers=3, d_model=32, n_heads=4)
    return request.param, model, tok


def _encode(tok, chats: list[list[dict[str, str]]]) -> tuple[Tensor, Tensor]:
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def test_assistant_rule_steers_assistant_turns_headers_and_generated_tokens(chat_model) -> None:
    family, model, tok = chat_model
    ids, attn = _encode(tok, [CHAT])
    v = torch.randn(model.config.hidden_size) * 5
    with torch.no_grad(), capture_blocks(model) as base:
        model(input_ids=ids, attention_mask=attn)
    with torch.no_grad(), capture_blocks(model) as steered:
        with apply(model, v, layers=1, alpha=2.0, tokenizer=tok) as handle:
            model(input_ids=ids, attention_mask=attn)
    steered_tokens = [t for t, m in zip(tok.convert_ids_to_tokens(ids[0]), handle.prompt_mask[0]) if m]
    assert steered_tokens == EXPECTED_STEERED[family]
    mask = handle.prompt_mask
    assert torch.equal(steered[1], torch.where(mask.unsqueeze(-1), base[1] + 2.0 * v, base[1]))
    # generation: the same as the explicit mask, with every generated token steered
    kwargs = dict(input_ids=ids, attention_mask=attn, max_new_tokens=4, do_sample=False)
    with torch.no_grad():
        with apply(model, v, layers=1, alpha=2.0, tokenizer=tok):
            by_rule = model.generate(**kwargs)
        with apply(model, v, layers=1, alpha=2.0, positions=mask):
            by_mask = model.generate(**kwargs)
    assert torch.equal(by_rule, by_mask)


def test_assistant_rule_without_chat_turn_raises(chat_model) -> None:
    _, model, tok = chat_model
    ids = tok(["plain text, no template"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    with pytest.raises(SteeringError, match="no assistant turn"):
        with apply(model, torch.randn(model.config.hidden_size), layers=0, alpha=1.0, tokenizer=tok):
            model(ids)


def test_nnsight_backend_matches_hooks(chat_model) -> None:
    from steering.nnsight_apply import forward_nnsight, generate_nnsight, wrap_nnsight

    family, model, tok = chat_model
    if family == "gemma3":
        pytest.skip("one family is enough for the nnsight parity check (Gemma's 262k vocabulary is slow)")
    chats = [CHAT, [{"role": "user", "content": "How are you feeling right now?"}]]
    ids, attn = _encode(tok, chats)
    assert bool((attn == 0).any()), "the batch should need padding"
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    torch.manual_seed(7)
    v = torch.randn(model.config.hidden_size) * 4
    lm = wrap_nnsight(model, tok)
    with torch.no_grad():
        with apply(model, v, layers=[0, 2], alpha=3.0, tokenizer=tok):
            hooked = model(input_ids=ids, attention_mask=attn, position_ids=position_ids).logits
            hooked_gen = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=5, do_sample=False)
        traced = forward_nnsight(lm, v, ids, attn, layers=[0, 2], alpha=3.0, tokenizer=tok)
        traced_gen = generate_nnsight(
            lm, v, ids, attn, layers=[0, 2], alpha=3.0, tokenizer=tok, max_new_tokens=5, do_sample=False
        )
    valid = attn.bool()
    assert torch.equal(traced[valid], hooked[valid])
    assert torch.equal(traced_gen, hooked_gen)


def test_concept_vectors_steer_like_their_directions(model: nn.Module) -> None:
    from probes.concept_vector import ConceptVector

    torch.manual_seed(8)
    directions = {1: torch.randn(D_MODEL)}
    vector = ConceptVector(directions, model_name="tiny", method="test")
    with torch.no_grad():
        with apply(model, directions, alpha=2.0, positions="all"):
            expected = model(IDS).logits
        with apply(model, vector, alpha=2.0, positions="all") as handle:
            got = model(IDS).logits
    assert handle.layers == [1]
    assert torch.equal(got, expected)


def test_one_direction_per_row_equals_each_row_steered_alone(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    v, w = torch.randn(D_MODEL, generator=g), torch.randn(D_MODEL, generator=g)
    rows = torch.stack([2.0 * v, torch.zeros(D_MODEL)])  # row 0 steered by 2v, row 1 unsteered
    with torch.no_grad():
        with apply(model, {1: rows}, layers=[1], alpha=1.0, positions="all"):
            together = model(IDS).logits
        with apply(model, v, layers=1, alpha=2.0, positions="all"):
            first = model(IDS[:1]).logits
        plain = model(IDS[1:]).logits
    torch.testing.assert_close(together[:1], first, rtol=0, atol=1e-5)
    torch.testing.assert_close(together[1:], plain, rtol=0, atol=1e-5)
    # row-wise directions need the additive operator, no condition, and a batch of their row count
    with pytest.raises(ValueError, match="additive operator"):
        with apply(model, {1: rows}, layers=[1], operator=ablate(), positions="all"):
            pass
    before = _hook_counts(model)
    with pytest.raises(SteeringError, match="one direction per row for 2 rows"):
        with apply(model, {1: torch.stack([v, w, v])[:2]}, layers=[1], positions="all"):
            model(IDS[:1])
    assert _hook_counts(model) == before
    with pytest.raises(ValueError, match=r"\(batch, 32\)"):
        with apply(model, {1: torch.randn(2, 5)}, layers=[1], positions="all"):
            pass
