"""probes.record / probes.positions: hooks, padding, chat masks and the three capture backends."""

from __future__ import annotations

import pytest
import torch

from probes import layers as L
from probes import positions as P
from probes.models import tiny_model
from probes.record import CaptureError, boot_bridge, capture, record

TEXTS = [
    "You are in a maze. To the north there is a wall.",
    "Go.",
    "Where do you move? Output only N/E/S/W.",
]
CHATS = [
    [
        {"role": "user", "content": "You are at (3, 4). Where do you move?"},
        {"role": "assistant", "content": "N"},
        {"role": "user", "content": "You are at (3, 3). Where now?"},
        {"role": "assistant", "content": "E"},
    ],
    [
        {"role": "user", "content": "Start. Where do you move?"},
        {"role": "assistant", "content": "S"},
    ],
]


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def tiny(request):
    model, tok = tiny_model(request.param, seed=1, n_layers=3)
    if request.param == "gemma3":
        # Non-trivial norm weights (init is the identity) so that site choices show in the numbers.
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model, tok


def reference_hidden(model, tok, text: str) -> list[torch.Tensor]:
    """Unbatched HF hidden states per block output (the last one un-normed), (pos, d) each."""
    ids = tok([text], return_tensors="pt", add_special_tokens=P.needs_special_tokens(tok, [text]))
    with torch.inference_mode():
        out = model(**ids, output_hidden_states=True, logits_to_keep=1)
    hs = [h[0] for h in out.hidden_states[1:]]
    # HF applies the final norm to the last entry; recover the block output with a hook instead.
    with record(model, [L.n_layers(model) - 1]) as acts, torch.inference_mode():
        model(**ids, logits_to_keep=1)
    hs[-1] = acts[L.n_layers(model) - 1][0]
    return hs


# ---------------------------------------------------------------------------------------------- positions


def test_last_token_index_left_and_right_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert P.last_token_index(mask).tolist() == [4, 3, 4]
    assert P.first_token_index(mask).tolist() == [2, 0, 0]
    with pytest.raises(P.PositionError, match="all padding"):
        P.last_token_index(torch.tensor([[0, 0]]))


def test_position_rules_are_padding_invariant():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert P.position_mask(0, mask).int().tolist() == [[0, 0, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert P.position_mask(-2, mask).int().tolist() == [[0, 0, 0, 1, 0], [0, 1, 0, 0, 0]]
    assert P.position_mask((1, None), mask).int().tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 0, 0]]
    assert P.position_mask(slice(-2, None), mask).int().tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 0, 0]]
    assert torch.equal(P.position_mask("all", mask), mask.bool())
    assert P.position_mask("last", mask).int().tolist() == [[0, 0, 0, 0, 1], [0, 0, 1, 0, 0]]
    custom = torch.tensor([[True, True, True, False, False], [False] * 5])
    assert P.position_mask(custom, mask).int().tolist() == [[0, 0, 1, 0, 0], [0] * 5]
    with pytest.raises(P.PositionError, match="outside"):
        P.position_mask(3, mask)
    with pytest.raises(P.PositionError, match="no tokens"):
        P.position_mask(slice(3, 4), mask)
    with pytest.raises(P.PositionError, match="assistant"):
        P.position_mask("assistant", mask)
    with pytest.raises(P.PositionError, match="unknown position"):
        P.position_mask("first", mask)
    with pytest.raises(P.PositionError, match="bool tensor"):
        P.position_mask(torch.ones(2, 5), mask)


def test_assistant_token_mask_marks_exactly_the_assistant_contents(tiny):
    _, tok = tiny
    encoded, mask, texts = P.encode_chats(tok, CHATS, close_final=False)
    for row, chat in enumerate(CHATS):
        ids = encoded["input_ids"][row][mask[row]]
        expected = "".join(m["content"] for m in chat if m["role"] == "assistant")
        assert tok.decode(ids) == expected
    # The open final message ends the text: its letter is the last real token.
    last = P.last_token_index(encoded["attention_mask"])
    assert [tok.decode(encoded["input_ids"][r, last[r]]) for r in range(2)] == ["E", "S"]
    assert torch.equal(P.assistant_token_mask(tok, CHATS, close_final=False), mask)


# ------------------------------------------------------------------------------------------------- record


def test_record_all_positions_equals_hf_hidden_states(tiny):
    model, tok = tiny
    ids = tok([TEXTS[0]], return_tensors="pt")
    with record(model, "all") as acts, torch.inference_mode():
        out = model(**ids, output_hidden_states=True, logits_to_keep=1)
    n = L.n_layers(model)
    for layer in range(n - 1):
        assert torch.equal(acts[layer], out.hidden_states[layer + 1])
    torch.testing.assert_close(L.final_norm(model)(acts[n - 1]), out.hidden_states[n], rtol=0, atol=1e-5)


def test_record_last_reads_mask_from_model_call_with_left_padding(tiny):
    model, tok = tiny
    encoded = P.encode_texts(tok, TEXTS, padding_side="left")
    position_ids = (encoded["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with record(model, [0, -1], positions="last") as acts, torch.inference_mode():
        model(**encoded, position_ids=position_ids, logits_to_keep=1)
    n = L.n_layers(model)
    assert set(acts) == {0, n - 1} and acts[0].shape == (3, 64)
    for row, text in enumerate(TEXTS):
        ref = reference_hidden(model, tok, text)
        torch.testing.assert_close(acts[0][row], ref[0][-1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(acts[n - 1][row], ref[n - 1][-1], rtol=1e-5, atol=1e-5)


def test_record_removes_only_its_own_handles_even_on_error(tiny):
    model, tok = tiny
    block = L.blocks(model)[0]
    foreign = block.register_forward_hook(lambda *a: None)
    before = dict(block._forward_hooks)
    with pytest.raises(RuntimeError, match="boom"):
        with record(model, "all", positions="last"):
            assert len(block._forward_hooks) == len(before) + 1
            raise RuntimeError("boom")
    assert dict(block._forward_hooks) == before
    assert not L.backbone(model)._forward_pre_hooks
    foreign.remove()


# ------------------------------------------------------------------------------------------------ capture


@pytest.mark.parametrize("backend", ["hooks", "nnsight", "transformer_lens"])
def test_capture_backends_equal_hf_hidden_states(tiny, backend):
    model, tok = tiny
    got = capture(model, tok, TEXTS, layers="all", position="last", batch_size=2, backend=backend)
    for row, text in enumerate(TEXTS):
        ref = reference_hidden(model, tok, text)
        for layer in range(L.n_layers(model)):
            torch.testing.assert_close(got[layer][row], ref[layer][-1], rtol=1e-5, atol=1e-5)


def test_capture_sites_agree_across_backends_and_leave_inputs_untouched(tiny):
    model, tok = tiny
    side, attn = tok.padding_side, model.config._attn_implementation
    bridge = boot_bridge(model, tok)  # booted once, reused for both sites
    for site in ("attn_out", "mlp_out"):
        hooks = capture(model, tok, TEXTS, layers=[0, 2], site=site, batch_size=3)
        nn_ = capture(model, tok, TEXTS, layers=[0, 2], site=site, batch_size=3, backend="nnsight")
        tl = capture(bridge, tok, TEXTS, layers=[0, 2], site=site, batch_size=3, backend="transformer_lens")
        for layer in (0, 2):
            torch.testing.assert_close(nn_[layer], hooks[layer], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(tl[layer], hooks[layer], rtol=1e-5, atol=1e-5)
        # Early stop after the deepest requested block (stop_at_layer in TransformerLens).
        tl_first = capture(
            bridge, tok, TEXTS, layers=[0], site=site, batch_size=3, backend="transformer_lens"
        )
        torch.testing.assert_close(tl_first[0], hooks[0], rtol=1e-5, atol=1e-5)
    # nnsight gets a tokenizer copy; the bridge wraps a model copy.
    assert tok.padding_side == side and model.config._attn_implementation == attn


def test_capture_batched_equals_unbatched_and_keeps_order(tiny):
    model, tok = tiny
    texts = TEXTS * 2
    batched = capture(model, tok, texts, layers=[1], batch_size=4)
    single = capture(model, tok, texts, layers=[1], batch_size=1)
    torch.testing.assert_close(batched[1], single[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[1][:3], batched[1][3:], rtol=0, atol=0)


def test_capture_assistant_mean_equals_manual_mean(tiny):
    model, tok = tiny
    for backend in ("hooks", "nnsight"):
        got = capture(model, tok, CHATS, layers=[1], position="assistant", backend=backend, batch_size=2)
        tokens = capture(
            model, tok, CHATS, layers=[1], position="assistant", reduce="none", backend=backend, batch_size=2
        )
        encoded, mask, texts = P.encode_chats(tok, CHATS, padding_side="right")
        assert tokens[1].shape[0] == int(mask.sum())
        for row, text in enumerate(texts):
            ref = reference_hidden(model, tok, text)[1]
            n_tok = int(mask[row].sum())
            selected = ref[mask[row][: ref.shape[0]]]
            assert selected.shape[0] == n_tok
            torch.testing.assert_close(got[1][row], selected.mean(0), rtol=1e-5, atol=1e-5)


def test_capture_chats_last_is_final_direction_letter(tiny):
    model, tok = tiny
    got = capture(model, tok, CHATS, layers=[0], close_final=False)
    text = P.render_messages(tok, CHATS[1], close_final=False)
    assert text.endswith("S")
    ref = reference_hidden(model, tok, text)
    torch.testing.assert_close(got[0][1], ref[0][-1], rtol=1e-5, atol=1e-5)


def test_capture_span_and_int_positions(tiny):
    model, tok = tiny
    first = capture(model, tok, TEXTS, layers=[0], position=0)
    span = capture(model, tok, TEXTS, layers=[0], position=(0, 2), reduce="none")
    ref = [reference_hidden(model, tok, t)[0] for t in TEXTS]
    for row in range(3):
        torch.testing.assert_close(first[0][row], ref[row][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(span[0][2 * row : 2 * row + 2], ref[row][:2], rtol=1e-5, atol=1e-5)


def test_capture_errors(tiny):
    model, tok = tiny
    with pytest.raises(CaptureError, match="no texts"):
        capture(model, tok, [])
    with pytest.raises(CaptureError, match="backend"):
        capture(model, tok, TEXTS, backend="vllm")  # type: ignore[arg-type]
    with pytest.raises(IndexError, match="valid layers"):
        capture(model, tok, TEXTS, layers=[7])
    with pytest.raises(CaptureError, match="chats"):
        capture(model, tok, TEXTS, position="assistant")
    with pytest.raises(CaptureError, match="single string"):
        capture(model, tok, "hello")  # type: ignore[arg-type]


def test_capture_nan_activations_raise(tiny):
    model, tok = tiny
    embed = model.get_input_embeddings().weight
    saved = embed.data.clone()
    try:
        with torch.no_grad():
            embed.fill_(float("nan"))
        with pytest.raises(CaptureError, match="non-finite"):
            capture(model, tok, TEXTS[:1], layers=[0])
    finally:
        with torch.no_grad():
            embed.copy_(saved)
