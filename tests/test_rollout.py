"""Rollout engine and episode logs, on tiny random models (exact float32 unless stated)."""

from __future__ import annotations

import doctest
import json

import pytest
import torch
from gymnasium.utils import seeding

from maze_env import MazeConfig, MazeEnv, Tile, generate_maze, render_chat
from maze_env.dynamics import move, neighbours
from probes.models import tiny_model
from probes.tokens import direction_token_ids
from training.episodes import EpisodeLogError, load_episodes, read_episode_info, save_episodes
from training.rollout import (
    SHARED_PREFIX_MIN,
    EpisodeBatch,
    action_logits,
    collect_episodes,
    common_prefix_length,
    direction_logprobs,
    episode_token_ids,
    shared_prefix_length,
)

SEEDS = [3, 11, 12, 40]
SHORT = MazeConfig(n_turns=4)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", seed=0)


@pytest.fixture(scope="module")
def episodes(llama):
    model, tok = llama
    return collect_episodes(model, tok, seeds=SEEDS, config=SHORT, autocast=False)


def _same(a: EpisodeBatch, b: EpisodeBatch, *, exact: bool) -> None:
    for name in EpisodeBatch.TENSOR_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if exact or not x.is_floating_point():
            assert torch.equal(x, y), name
        else:
            torch.testing.assert_close(x, y, atol=2e-5, rtol=1e-5, msg=name)
    assert a.messages == b.messages and a.seeds == b.seeds


# -- masking ------------------------------------------------------------------------------------------


def test_masked_sampling_never_emits_a_non_direction_token(llama):
    model, tok = llama
    dirs = direction_token_ids(tok)
    tempting = tok.convert_tokens_to_ids("X")
    assert tempting not in dirs

    def boost(module, inputs, output):  # make "X" (and the pad token) overwhelmingly likely
        output = output.clone()
        output[..., tempting] += 1e4
        output[..., tok.pad_token_id] += 1e4
        return output

    handle = model.get_output_embeddings().register_forward_hook(boost)
    try:
        full = model(torch.tensor([episode_token_ids(tok, [{"role": "user", "content": "hi"}])])).logits
        assert int(full[0, -1].argmax()) in (tempting, tok.pad_token_id)  # the hook really is active
        batch = collect_episodes(model, tok, seeds=list(range(8)), config=SHORT, temperature=5.0)
    finally:
        handle.remove()
    letters = batch.input_ids.gather(1, batch.action_positions + 1)
    assert set(letters.flatten().tolist()) <= set(dirs)
    assert torch.equal(letters, torch.tensor(dirs)[batch.actions])
    assert batch.actions.min() >= 0 and batch.actions.max() <= 3
    assert len(set(batch.actions.flatten().tolist())) == 4  # temperature 5 over 32 draws: all letters appear


def test_logprobs_are_the_masked_temperature_scaled_distribution(episodes):
    log_p = direction_logprobs(episodes.direction_logits, temperature=episodes.temperature)
    assert torch.equal(episodes.logprobs, log_p.gather(-1, episodes.actions[..., None]).squeeze(-1))
    hand = episodes.direction_logits[0, 0] / 0.7
    hand = hand - torch.logsumexp(hand, 0)
    torch.testing.assert_close(log_p[0, 0], hand)


def test_greedy_takes_the_argmax(llama):
    model, tok = llama
    batch = collect_episodes(model, tok, seeds=SEEDS, config=SHORT, greedy=True, autocast=False)
    assert torch.equal(batch.actions, batch.direction_logits.argmax(-1))
    assert batch.greedy


# -- determinism, batching, cache ---------------------------------------------------------------------


def test_same_seeds_give_identical_episodes(llama, episodes):
    model, tok = llama
    again = collect_episodes(model, tok, seeds=SEEDS, config=SHORT, autocast=False)
    _same(episodes, again, exact=True)
    other = collect_episodes(
        model, tok, seeds=SEEDS, config=SHORT, autocast=False, generator=torch.Generator().manual_seed(99)
    )
    assert not torch.equal(other.actions, episodes.actions)  # the generator really drives the sampling


def test_batched_equals_unbatched(llama, episodes):
    model, tok = llama
    one_by_one = collect_episodes(model, tok, seeds=SEEDS, config=SHORT, autocast=False, batch_size=1)
    _same(episodes, one_by_one, exact=False)
    assert torch.equal(episodes.input_ids, one_by_one.input_ids)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("batch_size", [None, 3])
def test_shared_first_prompts_give_the_same_episodes(llama, batch_size, family):
    # each distinct first prompt is fed once, after the prompts' common beginning (system prompt and the
    # maze's opening words), each cache copied; Gemma with a sliding window shorter than that beginning
    model, tok = llama if family == "llama" else tiny_model("gemma3", config_overrides={"sliding_window": 8})
    seeds = [3, 3, 11, 3, 11]  # two GRPO groups
    run = dict(seeds=seeds, config=SHORT, autocast=False, batch_size=batch_size)
    shared = collect_episodes(model, tok, **run)
    first = [shared.input_ids[i, : int(shared.action_positions[i, 0]) + 1].tolist() for i in range(5)]
    assert common_prefix_length(first) >= SHARED_PREFIX_MIN
    every_row = collect_episodes(model, tok, share_prompts=False, **run)
    _same(shared, every_row, exact=False)
    assert torch.equal(shared.direction_logits[0, 0], shared.direction_logits[1, 0])
    assert not torch.equal(shared.actions[[0, 1, 3]], shared.actions[[0, 0, 0]])  # rows still sample apart


def test_tokens_are_the_rendered_conversation(llama, episodes):
    _, tok = llama
    for i, messages in enumerate(episodes.messages):
        ids = episode_token_ids(tok, messages)
        assert (
            ids == tok(render_chat(tok, messages, close_final=False), add_special_tokens=False)["input_ids"]
        )
        length = int(episodes.attention_mask[i].sum())
        assert episodes.input_ids[i, :length].tolist() == ids
        assert (episodes.input_ids[i, length:] == tok.pad_token_id).all()
        assert (
            messages[0]["role"] == "user" and len(messages) == 2 * SHORT.n_turns
        )  # no system message of ours
    assert episodes.summary()["tokens"] == int(episodes.attention_mask.sum())


def test_cache_equals_full_forward_without_cache(llama, episodes):
    model, tok = llama
    dirs = direction_token_ids(tok)
    recomputed = action_logits(model, episodes)
    torch.testing.assert_close(recomputed, episodes.direction_logits, atol=2e-5, rtol=1e-5)
    for i in range(len(episodes)):  # one plain HF forward per unpadded episode, no cache, all logits
        length = int(episodes.attention_mask[i].sum())
        with torch.no_grad():
            logits = model(episodes.input_ids[i : i + 1, :length], use_cache=False).logits[0]
        plain = logits[episodes.action_positions[i]][:, dirs]
        torch.testing.assert_close(plain, episodes.direction_logits[i], atol=2e-5, rtol=1e-5)


def test_action_logits_is_differentiable(llama, episodes):
    model, _ = llama
    model.zero_grad()
    action_logits(model, episodes).logsumexp(-1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    model.zero_grad()


def test_autocast_is_close_to_float32(llama, episodes):
    model, tok = llama
    fast = collect_episodes(model, tok, seeds=SEEDS[:2], config=MazeConfig(n_turns=2), autocast=True)
    exact = episodes.direction_logits[:2, :2]
    assert not torch.equal(fast.direction_logits, exact)  # bf16 really ran: an explicit True is obeyed
    assert (fast.direction_logits - exact).abs().max() < 0.05 * exact.abs().max() + 1e-3


def test_default_precision_on_cpu_is_float32_whatever_a_timing_would_say(llama, episodes, monkeypatch):
    # Machines differ (AVX2 vs AVX512-BF16): the default must not depend on how fast bf16 looks here.
    # Claim native bf16 and make any timing fail: the default still runs, and runs float32.
    import time

    def no_timing() -> float:
        raise AssertionError("the precision was decided by timing")

    monkeypatch.setattr(time, "perf_counter", no_timing)
    if hasattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported"):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    model, tok = llama
    batch = collect_episodes(model, tok, seeds=SEEDS, config=SHORT)  # autocast=None: the device's rule
    _same(batch, episodes, exact=True)  # bit-identical to the explicit float32 rollout


def test_sliding_window_model_batched_equals_unbatched_and_teacher_forced():
    # Gemma 3 layout with a window shorter than an episode: padding must not eat into the window.
    model, tok = tiny_model("gemma3", seed=1, d_model=32, config_overrides={"sliding_window": 48})
    config = MazeConfig(n_turns=3)
    batched = collect_episodes(model, tok, seeds=SEEDS[:3], config=config, autocast=False)
    single = collect_episodes(model, tok, seeds=SEEDS[:3], config=config, autocast=False, batch_size=1)
    assert batched.input_ids.shape[1] > 4 * 48
    assert len(set(batched.attention_mask.sum(1).tolist())) > 1  # rows really were padded differently
    _same(batched, single, exact=False)
    torch.testing.assert_close(action_logits(model, batched), batched.direction_logits, atol=2e-5, rtol=1e-5)


def test_peft_model_rollout_and_recompute_agree(llama):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny_model("llama", seed=2)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft_model.train()
    frozen = peft_model.get_decoder().layers[0].eval()  # a submodule with its own mode
    batch = collect_episodes(peft_model, tok, seeds=SEEDS[:2], config=MazeConfig(n_turns=2), autocast=False)
    assert peft_model.training and peft_model.get_decoder().layers[1].training  # modes restored...
    assert not frozen.training  # ...each module's own
    peft_model.eval()
    torch.testing.assert_close(action_logits(peft_model, batch), batch.direction_logits, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("turns", [1, 3])
def test_shared_prefix_equals_full_forward_in_value_and_gradient(family, turns):
    # The update runs the rows' common prefix once and the rest on its KV cache: same logits, same gradients
    # (Gemma with an 8-token sliding window, shorter than the prefix, so the window must count positions).
    overrides = {"sliding_window": 8} if family == "gemma3" else None
    model, tok = tiny_model(family, seed=4, d_model=32, config_overrides=overrides)
    config = MazeConfig(n_turns=turns, wind_prob=0.5)  # wind sentences: rows of different lengths
    batch = collect_episodes(model, tok, seeds=SEEDS, config=config, autocast=False)
    prefix = shared_prefix_length(batch)
    assert prefix >= 16  # the system prompt and the maze's opening words
    assert prefix <= int(batch.action_positions[:, 0].min())
    if turns > 1:  # rows of different lengths: the rests are really left-padded
        assert len(set((batch.action_positions[:, -1]).tolist())) > 1
    ids = batch.input_ids
    assert (ids[:, :prefix] == ids[:1, :prefix]).all() and not (ids[:, prefix] == ids[0, prefix]).all()

    def run(share: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        logits = action_logits(model, batch, share_prefix=share)
        (logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)).sum().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    shared, shared_grads = run(True)
    full, full_grads = run(False)
    torch.testing.assert_close(shared, full, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(shared, batch.direction_logits, atol=2e-5, rtol=1e-5)
    assert len(shared_grads) == len(full_grads) == len(list(model.parameters()))
    for a, b in zip(shared_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    model.zero_grad()


def test_shared_prefix_length_of_one_row_or_a_late_first_difference():
    model, tok = tiny_model("llama", seed=0)
    batch = collect_episodes(model, tok, seeds=SEEDS[:2], config=MazeConfig(n_turns=1), autocast=False)
    assert shared_prefix_length(batch.select([0])) == 0
    twice = batch.select([0, 0])  # identical rows: the prefix stops before the first decision
    assert shared_prefix_length(twice) == int(batch.action_positions[0, 0])


# -- environment agreement ----------------------------------------------------------------------------


def test_rewards_equal_maze_env_replay_without_wind(llama):
    model, tok = llama
    config = MazeConfig(n_turns=6, wind_prob=0.0, shuffle_clauses=False)
    batch = collect_episodes(model, tok, seeds=SEEDS, config=config, autocast=False)
    for i, seed in enumerate(SEEDS):
        env = MazeEnv(config)
        obs, info = env.reset(seed=seed)
        for t in range(config.n_turns):
            assert batch.messages[i][2 * t]["content"] == obs
            assert batch.neighbours[i, t].tolist() == list(info["neighbours"])
            obs, reward, _, _, info = env.step(int(batch.actions[i, t]))
            assert batch.rewards[i, t].item() == pytest.approx(reward, abs=1e-6)
            assert (batch.delta_gold[i, t].item(), batch.delta_mold[i, t].item()) == (
                info["delta_gold"],
                info["delta_mold"],
            )
        assert batch.returns[i].item() == pytest.approx(sum(batch.rewards[i].tolist()), abs=1e-4)
    assert (batch.wind == -1).all()


def test_rewards_equal_replay_with_recorded_wind(llama):
    model, tok = llama
    config = MazeConfig(n_turns=8, wind_prob=0.5)
    batch = collect_episodes(model, tok, seeds=SEEDS, config=config, autocast=False)
    assert (batch.wind >= 0).any()
    for i, seed in enumerate(SEEDS):
        maze = generate_maze(seeding.np_random(seed)[0], config)
        grid, pos = maze.grid.copy(), maze.start
        for t in range(config.n_turns):
            assert batch.neighbours[i, t].tolist() == [int(x) for x in neighbours(grid, pos)]
            entered = []
            for direction in (int(batch.actions[i, t]), int(batch.wind[i, t])):
                if direction >= 0:
                    pos, tile = move(grid, pos, direction, melt=config.melt)
                    entered.append(tile)
            reward = config.step_cost + sum(config.reward_of(tile) for tile in entered)
            assert batch.rewards[i, t].item() == pytest.approx(reward, abs=1e-5)
            assert batch.delta_gold[i, t].item() == entered.count(Tile.GOLD)
            assert batch.delta_mold[i, t].item() == entered.count(Tile.MOLD)


# -- EpisodeBatch helpers -----------------------------------------------------------------------------


def test_returns_to_go_and_summary_by_hand(episodes):
    batch = episodes.select([0, 1])
    batch.rewards = torch.tensor([[-0.1, 19.9, -10.1, -0.1], [-0.1, -0.1, -0.1, 39.9]])
    batch.delta_gold = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 2]])
    batch.delta_mold = torch.tensor([[0, 0, 1, 0], [0, 0, 0, 0]])
    batch.actions = torch.tensor([[0, 0, 1, 2], [0, 3, 3, 3]])
    torch.testing.assert_close(batch.returns, torch.tensor([9.6, 39.6]))
    torch.testing.assert_close(
        batch.returns_to_go, torch.tensor([[9.6, 9.7, -10.2, -0.1], [39.6, 39.7, 39.8, 39.9]])
    )
    summary = batch.summary()
    assert summary["mean_return"] == pytest.approx(24.6, abs=1e-5)
    assert summary["gold_per_episode"] == 1.5 and summary["mold_per_episode"] == 0.5
    assert summary["action_freq"] == {"N": 0.375, "E": 0.125, "S": 0.125, "W": 0.375}
    json.dumps(summary)


def test_select_and_cat_round_trip(episodes):
    parts = [episodes.select([0]), episodes.select(slice(1, 3)), episodes.select(torch.tensor([3]))]
    assert parts[0].input_ids.shape[1] == int(episodes.attention_mask[0].sum())  # padding trimmed
    _same(EpisodeBatch.cat(parts), episodes, exact=True)
    with pytest.raises(ValueError, match="temperature"):
        EpisodeBatch.cat([parts[0], parts[1].__class__(**{**parts[1].__dict__, "temperature": 1.0})])


# -- logs ---------------------------------------------------------------------------------------------


def test_episode_log_round_trip(tmp_path, episodes):
    path = save_episodes(episodes, tmp_path / "logs" / "step_000003", extra={"step": 3})
    assert path == tmp_path / "logs" / "step_000003.safetensors" and path.with_suffix(".json").is_file()
    _same(load_episodes(path), episodes, exact=True)
    _same(load_episodes(tmp_path / "logs" / "step_000003"), episodes, exact=True)
    info = read_episode_info(path)
    assert info["extra"] == {"step": 3} and info["seeds"] == SEEDS and info["n_turns"] == SHORT.n_turns
    assert sorted(p.name for p in path.parent.iterdir()) == ["step_000003.json", "step_000003.safetensors"]
    assert path.stat().st_size < episodes.input_ids.numel() * 4 + 4096  # int32 ids: compact


def test_episode_log_errors(tmp_path, episodes):
    with pytest.raises(EpisodeLogError, match="no episode log"):
        load_episodes(tmp_path / "missing")
    first = save_episodes(episodes, tmp_path / "a")
    save_episodes(episodes.select([0]), tmp_path / "b")
    (tmp_path / "b.json").replace(tmp_path / "a.json")  # a JSON half from another save
    with pytest.raises(EpisodeLogError, match="different saves"):
        load_episodes(first)
    (tmp_path / "c.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(EpisodeLogError, match="not a welfare-axis-episodes"):
        load_episodes(tmp_path / "c")
    with pytest.raises(TypeError, match="EpisodeBatch"):
        save_episodes({"actions": 1}, tmp_path / "d")


# -- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seeds": []}, "seeds is empty"),
        ({"seeds": [0], "temperature": 0.0}, "temperature must be"),
        ({"seeds": [0], "temperature": float("nan")}, "temperature must be"),
        ({"seeds": [0], "batch_size": 0}, "batch_size must be"),
    ],
)
def test_bad_input_is_rejected(llama, kwargs, match):
    model, tok = llama
    with pytest.raises(ValueError, match=match):
        collect_episodes(model, tok, config=SHORT, **kwargs)


def test_ambiguous_direction_letters_raise(llama):
    from probes.tokens import TokenizationError

    model, tok = llama
    original = tok.chat_template
    # A template that writes " N" after the assistant header: the letter no longer is the token "N".
    tok.chat_template = original.replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant\n '")
    try:
        assert tok.apply_chat_template(
            [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
        ).endswith("\n ")
        with pytest.raises(TokenizationError, match="'N'"):
            collect_episodes(model, tok, seeds=[0], config=SHORT)
    finally:
        tok.chat_template = original


@pytest.mark.parametrize("module_name", ["training.rollout", "training.episodes"])
def test_docstring_examples_run(module_name):
    import importlib

    result = doctest.testmod(importlib.import_module(module_name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_maze_seeds_match_the_single_env(episodes):
    # maze i of the batch is the maze MazeEnv().reset(seed=seeds[i]) generates: same start, same neighbours.
    for i, seed in enumerate(SEEDS):
        env = MazeEnv(SHORT)
        _, info = env.reset(seed=seed)
        x, y = env.position
        assert f"location ({x}, {y})." in episodes.messages[i][0]["content"]
        assert episodes.neighbours[i, 0].tolist() == list(info["neighbours"])
