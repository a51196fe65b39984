"""maze_env.adapters: the text-action env and the TRL/verl reward functions."""

from __future__ import annotations

import numpy as np
import pytest

from maze_env import ACTIONS, MazeConfig, MazeEnv, Tile
from maze_env.adapters import (
    MazeReward,
    MazeTextEnv,
    completion_moves,
    verl_compute_score,
)

TILE_REWARD = {Tile.PATH: 0.0, Tile.MOLD: -10.0, Tile.GOLD: 20.0}


def _random_answers(rng: np.random.Generator, n: int) -> list[str]:
    """Mostly valid letters with some malformed answers mixed in."""
    junk = ["north", "N.", "", "E E", "w", "?"]
    return [str(rng.choice(junk)) if rng.random() < 0.25 else ACTIONS[int(rng.integers(4))] for _ in range(n)]


def test_valid_text_moves_follow_maze_env_exactly():
    for seed in (0, 1, 7):
        text_env, plain = MazeTextEnv(), MazeEnv()
        obs_t, info_t = text_env.reset(seed=seed)
        obs_p, info_p = plain.reset(seed=seed)
        assert obs_t == obs_p and info_t["position"] == info_p["position"]
        rng = np.random.default_rng(seed)
        for _ in range(plain.config.n_turns):
            action = int(rng.integers(4))
            got = text_env.step(f" {ACTIONS[action]}\n")
            want = plain.step(action)
            assert got[0] == want[0] and got[1] == want[1] and got[3] == want[3]
            assert got[4]["position"] == want[4]["position"] and got[4]["action"] == action
            assert not got[4]["invalid_action"]
        assert got[3] is True


def test_invalid_answer_costs_a_turn_and_the_penalty_and_does_not_move():
    env = MazeTextEnv(invalid_penalty=-2.5)
    obs, info = env.reset(seed=4)
    obs2, reward, terminated, truncated, info2 = env.step("Go north!")
    assert reward == -2.5 and not terminated and not truncated
    assert obs2 == obs and info2["position"] == info["position"]
    assert info2["invalid_action"] and "N/E/S/W" in info2["parse_error"]
    assert info2["n_invalid"] == 1 and info2["turn"] == 1 and info2["delta_gold"] == 0
    for turn in range(2, env.config.n_turns + 1):
        *_, truncated, _ = env.step("")
        assert truncated == (turn == env.config.n_turns)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step("N")
    env.reset(seed=4)
    with pytest.raises(TypeError, match="str"):
        env.step(0)
    with pytest.raises(ValueError, match="finite"):
        MazeTextEnv(invalid_penalty=float("nan"))


def test_gymnasium_env_checker_and_chat_views():
    from gymnasium.utils.env_checker import check_env

    check_env(MazeTextEnv(), skip_render_check=True)
    env = MazeTextEnv(MazeConfig(n_turns=3))
    env.reset(seed=2)
    out = env.chat_step("S")
    assert set(out) == {"observations", "reward", "done", "metadata"}
    assert out["observations"][0]["role"] == "user" and not out["done"]
    env.chat_step("bad")
    last = env.chat_step("E")
    assert last["done"] and last["observations"] == []
    roles = [m["role"] for m in env.messages]
    assert roles == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert [m["content"] for m in env.messages if m["role"] == "assistant"] == ["S", "bad", "E"]


def test_reward_is_hand_computed_for_one_windless_move():
    config = MazeConfig(wind_prob=0.0)
    for seed in range(5):
        _, info = MazeEnv(config).reset(seed=seed)
        for direction in range(4):
            tile = Tile(info["neighbours"][direction])
            expected = -0.1 + TILE_REWARD[tile]
            got = MazeReward(config)(prompts=["p"], completions=[ACTIONS[direction]], seed=[seed])
            assert got == [pytest.approx(expected, abs=1e-12)]
            # one invalid answer then the same move: penalty + the same tile (the agent did not move)
            got = MazeReward(config, invalid_penalty=-3.0)(
                prompts=["p"], completions=[f"x {ACTIONS[direction]}"], seed=[seed]
            )
            assert got == [pytest.approx(-3.0 + expected, abs=1e-12)]


def test_reward_replays_the_env_return_for_every_completion_format():
    reward = MazeReward()
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        env = MazeTextEnv()
        env.reset(seed=seed)
        total = 0.0
        answers = _random_answers(rng, env.config.n_turns)
        for answer in answers:
            total += env.step(answer)[1]
        chat = env.messages[1:]  # what follows the first user prompt, TRL's conversational completion
        as_list = [m["content"] for m in chat if m["role"] == "assistant"]
        assert as_list == answers
        assert reward(prompts=["p"], completions=[chat], seed=[seed]) == [pytest.approx(total, abs=1e-9)]
        assert reward(prompts=["p"], completions=[as_list], seed=[seed]) == [pytest.approx(total, abs=1e-9)]
        if all(a and " " not in a for a in answers):
            assert reward(prompts=["p"], completions=[" ".join(answers)], seed=[seed]) == [
                pytest.approx(total, abs=1e-9)
            ]


def test_reward_trl_keyword_contract_and_logging():
    reward = MazeReward()
    logged: dict[str, float] = {}
    moves = "N " * 20  # past the 15 turns: the extra moves are ignored
    scores = reward(
        prompts=["a", "b"],
        completions=[moves, "E"],
        completion_ids=[[1], [2]],
        trainer_state=None,
        log_extra=lambda *a: None,
        log_metric=lambda name, value: logged.__setitem__(name, value),
        seed=[11, 11],
    )
    details = reward.details([moves, "E"], [11, 11])
    assert details[0].n_ignored == 5 and len(details[0].rewards) == 15
    assert scores == [d.total for d in details]
    assert logged["maze/gold"] == pytest.approx((details[0].gold + details[1].gold) / 2)
    assert set(logged) == {"maze/gold", "maze/mold", "maze/invalid"}
    with pytest.raises(KeyError, match="'seed' column"):
        reward(prompts=["a"], completions=["N"])
    with pytest.raises(ValueError, match="1 prompts but 2 completions"):
        reward(prompts=["a"], completions=["N", "S"], seed=[1])
    with pytest.raises(TypeError, match="completion"):
        completion_moves([3])
    renamed = MazeReward(seed_key="maze_seed")(prompts=["a"], completions=["N"], maze_seed=[11])
    assert renamed == [reward.replay(11, ["N"])[0]]


def test_verl_compute_score_matches_the_trl_reward():
    expected = MazeReward()(prompts=["p"], completions=["N E S"], seed=[9])[0]
    assert verl_compute_score("maze", "N E S", ground_truth=None, extra_info={"seed": 9}) == expected
    assert verl_compute_score("maze", "N E S", ground_truth=9) == expected
    windless = MazeConfig(wind_prob=0.0)
    assert (
        verl_compute_score("maze", "N", 9, config=windless.to_dict())
        == MazeReward(windless)(prompts=["p"], completions=["N"], seed=[9])[0]
    )
    with pytest.raises(ValueError, match="extra_info"):
        verl_compute_score("maze", "N", ground_truth="no seed")


@pytest.mark.slow
def test_trl_grpo_trainer_calls_the_reward(tmp_path):
    """One real TRL GRPOTrainer step on a tiny model with MazeReward as its reward function."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from probes.models import tiny_model

    model, tok = tiny_model("llama", seed=0)
    obs, _ = MazeTextEnv().reset(seed=3)
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": obs}]] * 2, "seed": [3, 4]})
    calls: list[list[float]] = []
    reward = MazeReward()

    def recorded(prompts, completions, **kwargs):
        scores = reward(prompts, completions, **kwargs)
        calls.append(scores)
        return scores

    args = GRPOConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=4,
        bf16=False,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=[recorded], args=args, train_dataset=data, processing_class=tok
    )
    trainer.train()
    assert calls and len(calls[0]) == 4
    assert all(isinstance(score, float) for score in calls[0])
