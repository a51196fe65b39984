"""The maze: Gymnasium conformance, paper rules, generator invariants, text, batch form, bad input."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import maze_env
from maze_env import (
    ACTIONS,
    Maze,
    MazeBatch,
    MazeConfig,
    MazeEnv,
    Tile,
    TileSet,
    generate_maze,
    observation_text,
    parse_action,
)
from maze_env.generate import mold_count_bounds

R, M, G = "\U0001f9fe", "\U0001f5c2", "\U0001f4d0"  # receipt (Path), card index dividers (Mold), ruler (Gold)


def _hand_maze(rows: list[str], start: tuple[int, int]) -> Maze:
    """Build a maze from strings: '.' Path, '#' Mold, 'G' Gold."""
    grid = np.array([[{".": 0, "#": 1, "G": 2}[c] for c in row] for row in rows], dtype=np.int8)
    return Maze(grid=grid, start=start)


def _play(env: gym.Env, seed: int, actions: list[int]):
    obs, info = env.reset(seed=seed)
    out = [(obs, info)]
    for a in actions:
        out.append(env.step(a))
    return out


# -- Gymnasium conformance ---------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", sorted(maze_env.REGISTERED_IDS))
def test_check_env_passes_for_every_registered_id(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=False)
    obs, _ = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    for _ in range(15):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
    assert truncated and not terminated


@pytest.mark.parametrize("env_id", sorted(maze_env.REGISTERED_IDS))
def test_same_seed_gives_identical_episodes(env_id):
    actions = list(np.random.default_rng(1).integers(0, 4, 15))
    a = _play(gym.make(env_id), 123, actions)
    b = _play(gym.make(env_id), 123, actions)
    assert repr(a) == repr(b)
    c = _play(gym.make(env_id), 124, actions)
    assert repr(a) != repr(c)


def test_registered_presets_change_glyphs_not_rewards():
    office = gym.make("WelfareMaze-v0").unwrapped.config
    swap = gym.make("WelfareMaze-Swap-v0").unwrapped.config
    shuffle = gym.make("WelfareMaze-Shuffle-v0").unwrapped.config
    assert office.tiles.glyph(Tile.MOLD) == swap.tiles.glyph(Tile.GOLD) == M
    assert office.tiles.glyph(Tile.GOLD) == swap.tiles.glyph(Tile.MOLD) == G
    assert all(shuffle.tiles.glyph(t) != office.tiles.glyph(t) for t in Tile)
    assert office.tile_rewards == swap.tile_rewards == shuffle.tile_rewards == (0.0, -10.0, 20.0)
    assert gym.make("WelfareMaze-NoWind-v0").unwrapped.config.wind_prob == 0.0


def test_episode_is_exactly_n_turns_and_stepping_after_raises():
    env = MazeEnv()
    env.reset(seed=0)
    for t in range(15):
        _, _, terminated, truncated, info = env.step(t % 4)
        assert truncated == (t == 14) and not terminated and info["turn"] == t + 1
    with pytest.raises(RuntimeError, match="finished after 15 turns"):
        env.step(0)


# -- generator invariants ------------------------------------------------------------------------------------
# A subnormal lower bound once let 0 Mold through (the bounds used to subtract an epsilon).
@example(seed=0, size=5, frac_min=5e-324, width=0.5, walk_min=11.0, walk_extra=0.0, gold_frac=0.0)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(5, 60),
    frac_min=st.floats(0.0, 0.45),
    width=st.floats(0.05, 0.5),
    walk_min=st.floats(0.0, 20.0),
    walk_extra=st.floats(0.0, 20.0),
    gold_frac=st.floats(0.0, 1.0),
)
def test_generator_invariants(seed, size, frac_min, width, walk_min, walk_extra, gold_frac):
    n_interior = (size - 2) ** 2
    lo, hi = mold_count_bounds(n_interior, frac_min, min(1.0, frac_min + width))
    assume(lo <= hi)  # otherwise MazeConfig rejects the window (tested below)
    cfg = MazeConfig(
        size=size,
        mold_frac_min=frac_min,
        mold_frac_max=min(1.0, frac_min + width),
        walk_min_factor=walk_min,
        walk_max_factor=walk_min + walk_extra,
        gold_frac=gold_frac,
    )
    maze = generate_maze(np.random.default_rng(seed), cfg)
    g = maze.grid
    ring = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    assert (ring == Tile.MOLD).all()
    inner = g[1:-1, 1:-1]
    n = inner.size
    n_mold = int((inner == Tile.MOLD).sum())
    lo, hi = mold_count_bounds(n, cfg.mold_frac_min, cfg.mold_frac_max)
    assert lo <= n_mold <= hi
    assert cfg.mold_frac_min <= n_mold / n < cfg.mold_frac_max
    n_path_and_gold = n - n_mold
    expected_gold = min(max(1, int(np.floor(cfg.gold_frac * n_mold))), n_path_and_gold - 1)
    assert int((inner == Tile.GOLD).sum()) == expected_gold
    x, y = maze.start
    assert g[y, x] == Tile.PATH
    # The start is the BFS-nearest Path cell to the centre: no Path cell is closer in grid steps.
    cx, cy = size // 2, size // 2
    ys, xs = np.nonzero(g == Tile.PATH)
    assert abs(x - cx) + abs(y - cy) == int((np.abs(xs - cx) + np.abs(ys - cy)).min())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_paper_maze_start_is_central_and_border_unreachable(seed):
    maze = generate_maze(np.random.default_rng(seed), MazeConfig())
    x, y = maze.start
    # 15 turns with wind move at most 30 tiles: the ring (distance >= 49 - 5) is never reached.
    assert max(abs(x - 50), abs(y - 50)) <= 5
    counts = maze.counts()
    assert counts["mold"] == 4801 and counts["gold"] == 960  # walk carves < 50%: pushed to just under 50%


def test_generation_uses_only_the_given_rng():
    a = generate_maze(np.random.default_rng(7), MazeConfig())
    b = generate_maze(np.random.default_rng(7), MazeConfig())
    assert np.array_equal(a.grid, b.grid) and a.start == b.start


# -- text --------------------------------------------------------------------------------------------------
def test_rendered_turn_exact_text_without_and_with_wind():
    maze = _hand_maze(["#####", "#.G.#", "#.#.#", "#...#", "#####"], start=(1, 2))
    env = MazeEnv(MazeConfig(size=5, shuffle_clauses=False, wind_prob=0.0))
    obs, _ = env.reset(seed=0, options={"maze": maze})
    assert obs == (
        "You are in a maze. Currently, you're at location (1, 2). "
        f"To the north there is {R}; to the east there is {M}; to the south there is {R}; to the west there is {M}. "
        "Where do you move? Output only N/E/S/W without punctuation."
    )
    assert observation_text(
        (50, 48), (Tile.GOLD, Tile.PATH, Tile.MOLD, Tile.MOLD), TileSet(), order=(0, 1, 2, 3), wind=3
    ) == (
        "A strong wind from the East blew you West! You are in a maze. Currently, you're at location (50, 48). "
        f"To the north there is {G}; to the east there is {R}; to the south there is {M}; to the west there is {M}. "
        "Where do you move? Output only N/E/S/W without punctuation."
    )


def test_clause_order_is_shuffled_per_turn_and_recorded():
    env = MazeEnv()
    orders = set()
    obs, info = env.reset(seed=5)
    for _ in range(15):
        orders.add(info["clause_order"])
        # Each clause names its direction; the recorded order says where it appears.
        positions = [obs.lower().index(f"to the {d} there is") for d in ("north", "east", "south", "west")]
        assert tuple(np.argsort(positions)) == info["clause_order"]
        obs, _, _, _, info = env.step(int(np.random.default_rng(len(orders)).integers(4)))
    assert len(orders) > 3


def test_wind_sentence_appears_in_the_next_prompt_exactly_when_wind_blew():
    env = MazeEnv(MazeConfig(wind_prob=0.5))
    env.reset(seed=11)
    seen = 0
    for t in range(15):
        obs, _, _, _, info = env.step(t % 4)
        if info["wind"] is None:
            assert not obs.startswith("A strong wind")
        else:
            seen += 1
            assert obs.startswith(maze_env.wind_sentence(info["wind"]["direction"]))
    assert seen > 0


@pytest.mark.parametrize("text,expected", [("N", 0), ("E", 1), ("S", 2), ("W", 3), (" W\n", 3)])
def test_parse_action_accepts_exactly_the_four_letters(text, expected):
    assert parse_action(text) == expected


@pytest.mark.parametrize("text", ["n", "North", "N.", "NE", "", "X", "1"])
def test_parse_action_rejects_everything_else(text):
    with pytest.raises(maze_env.ActionParseError, match="exactly one of N/E/S/W"):
        parse_action(text)


def test_episode_messages_alternate_without_system_prompt():
    msgs = maze_env.episode_messages(["o1", "o2"], [0, 3])
    assert msgs == [
        {"role": "user", "content": "o1"},
        {"role": "assistant", "content": "N"},
        {"role": "user", "content": "o2"},
        {"role": "assistant", "content": "W"},
    ]
    with pytest.raises(ValueError, match="len\\(actions\\)"):
        maze_env.episode_messages(["o1"], [0, 1, 2])


# -- rules on hand-built grids ---------------------------------------------------------------------------
def test_melting_turns_the_tile_left_into_mold_gold_included():
    maze = _hand_maze(["#####", "#.G.#", "#G..#", "#...#", "#####"], start=(1, 1))
    env = MazeEnv(MazeConfig(size=5, wind_prob=0.0))
    env.reset(seed=0, options={"maze": maze})
    _, r, _, _, info = env.step(1)  # E onto Gold
    assert r == pytest.approx(19.9) and info["delta_gold"] == 1 and info["reward_parts"]["gold"] == 20.0
    assert env.grid[1, 1] == Tile.MOLD  # the start melted
    assert env.grid[1, 2] == Tile.GOLD  # standing on it: not yet melted
    _, r, _, _, info = env.step(3)  # back W onto the melted start
    assert r == pytest.approx(-10.1) and info["delta_mold"] == 1
    assert env.grid[1, 2] == Tile.MOLD  # the Gold melted when left: no re-harvesting
    _, r, _, _, _ = env.step(1)
    assert r == pytest.approx(-10.1)
    assert maze.grid[1, 2] == Tile.GOLD  # the layout itself is never mutated


def test_wind_moves_after_the_chosen_move_and_both_tiles_count():
    rows = ["#######"] + ["#GGGGG#"] * 5 + ["#######"]
    for seed in range(40):
        maze = _hand_maze(rows, start=(3, 3))
        env = MazeEnv(MazeConfig(size=7, wind_prob=1.0))
        env.reset(seed=seed, options={"maze": maze})
        _, r, _, _, info = env.step(0)  # N to (3, 2), then pushed
        w = info["wind"]["direction"]
        dx, dy = maze_env.dynamics.DX[w], maze_env.dynamics.DY[w]
        assert info["position"] == (3 + dx, 2 + dy)
        if w == 2:  # pushed back S onto the melted start
            assert info["entered"] == (Tile.GOLD, Tile.MOLD) and r == pytest.approx(20 - 10 - 0.1)
        else:
            assert info["entered"] == (Tile.GOLD, Tile.GOLD) and r == pytest.approx(40 - 0.1)


def test_wind_frequency_matches_probability():
    env = MazeEnv()
    n = blown = 0
    for seed in range(60):
        env.reset(seed=seed)
        for t in range(15):
            blown += env.step(t % 4)[4]["wind"] is not None
            n += 1
    assert abs(blown / n - 0.1) < 4 * np.sqrt(0.1 * 0.9 / n)


def test_moves_off_the_grid_are_blocked():
    maze = _hand_maze(["..G..", ".....", ".....", ".....", "....."], start=(0, 0))
    env = MazeEnv(MazeConfig(size=5, wind_prob=0.0))
    env.reset(seed=0, options={"maze": maze})
    _, r, _, _, info = env.step(0)
    assert info["position"] == (0, 0) and info["entered"] == () and r == pytest.approx(-0.1)
    assert env.grid[0, 0] == Tile.PATH  # no move, no melt


# -- batch form ------------------------------------------------------------------------------------------
def test_batch_generates_the_same_mazes_as_single_envs():
    batch = MazeBatch(5)
    batch.reset(seed=[3, 1, 4, 1, 5])
    for i, s in enumerate([3, 1, 4, 1, 5]):
        env = MazeEnv()
        env.reset(seed=s)
        assert np.array_equal(batch.grids[i], env.grid) and tuple(batch.positions[i]) == env.position


def test_batch_first_observation_is_the_single_env_s_so_a_group_shares_its_prompt():
    seeds = [7, 7, 8, 7]
    texts = MazeBatch(4).reset(seed=seeds)  # clauses shuffled (the default)
    assert texts == [MazeEnv().reset(seed=s)[0] for s in seeds]
    assert texts[0] == texts[1] == texts[3] != texts[2]
    assert len({MazeEnv().reset(seed=s)[1]["clause_order"] for s in range(20)}) > 1  # really shuffled


def test_batch_steps_match_single_envs_without_wind():
    cfg = MazeConfig(wind_prob=0.0, shuffle_clauses=False)
    batch = MazeBatch(6, cfg)
    texts = batch.reset(seed=100)
    envs = [MazeEnv(cfg) for _ in range(6)]
    singles = [e.reset(seed=100 + i)[0] for i, e in enumerate(envs)]
    assert texts == singles
    rng = np.random.default_rng(0)
    for _ in range(15):
        actions = rng.integers(0, 4, 6)
        rewards, info = batch.step(actions)
        for i, e in enumerate(envs):
            obs, r, _, _, inf = e.step(int(actions[i]))
            assert r == pytest.approx(rewards[i]) and inf["delta_gold"] == info["delta_gold"][i]
            assert obs == batch.observations()[i]
            assert np.array_equal(e.grid, batch.grids[i])
    assert batch.done
    with pytest.raises(RuntimeError, match="finished"):
        batch.step(np.zeros(6, dtype=int))


def test_batch_wind_rate_and_text():
    batch = MazeBatch(400)
    batch.reset(seed=0)
    rewards, info = batch.step(np.zeros(400, dtype=int))
    blown = info["wind"] >= 0
    assert 0.05 < blown.mean() < 0.16
    texts = batch.observations()
    for i in np.flatnonzero(blown)[:5]:
        assert texts[i].startswith(maze_env.wind_sentence(int(info["wind"][i])))


def test_batch_bad_input():
    with pytest.raises(ValueError, match="positive integer"):
        MazeBatch(0)
    batch = MazeBatch(2)
    with pytest.raises(RuntimeError, match="reset"):
        batch.step(np.array([0, 0]))
    batch.reset(seed=0)
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        batch.step(np.array([0, 0, 0]))
    with pytest.raises(ValueError, match="0..3"):
        batch.step(np.array([0, 4]))
    with pytest.raises(ValueError, match="one seed per maze"):
        batch.reset(seed=[1, 2, 3])


# -- bad input --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"size": 2}, ValueError, "size must be an integer >= 5"),
        ({"size": 10.5}, ValueError, "size must be an integer"),
        ({"mold_frac_max": 1.5}, ValueError, "mold_frac_max must be in \\[0, 1\\]; got 1.5"),
        ({"mold_frac_min": -0.1}, ValueError, "mold_frac_min must be in \\[0, 1\\]"),
        ({"mold_frac_min": 0.6}, ValueError, "mold_frac_min < mold_frac_max"),
        ({"gold_frac": 2}, ValueError, "gold_frac must be in \\[0, 1\\]"),
        ({"wind_prob": -1}, ValueError, "wind_prob must be in \\[0, 1\\]"),
        ({"reward_gold": "20"}, TypeError, "reward_gold must be a finite number; got '20'"),
        ({"step_cost": float("nan")}, TypeError, "step_cost must be a finite number"),
        ({"n_turns": 0}, ValueError, "n_turns must be an integer >= 1"),
        ({"walk_min_factor": 9, "walk_max_factor": 3}, ValueError, "walk_min_factor <= walk_max_factor"),
        ({"tiles": "office"}, TypeError, "tiles must be a TileSet"),
        (
            {"size": 5, "mold_frac_min": 0.3, "mold_frac_max": 0.32},
            ValueError,
            "no Mold count of a 3x3 interior",
        ),
    ],
)
def test_invalid_configs_name_the_value_and_range(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MazeConfig(**kwargs)


def test_unknown_preset_glyph_clash_and_unknown_keys():
    with pytest.raises(ValueError, match="unknown tile set 'disco'; choose one of"):
        TileSet.named("disco")
    with pytest.raises(ValueError, match="glyph clash"):
        TileSet(path="a", mold="a", gold="b")
    with pytest.raises(KeyError, match="unknown maze config keys \\['colour'\\]"):
        MazeConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="unknown tile 'lava'"):
        Tile.parse("lava")


@pytest.mark.parametrize(
    "action,exc", [(4, ValueError), (-1, ValueError), ("N", TypeError), (1.0, TypeError), (True, TypeError)]
)
def test_actions_out_of_range_are_rejected(action, exc):
    env = MazeEnv()
    env.reset(seed=0)
    with pytest.raises(exc, match="0..3"):
        env.step(action)


def test_config_round_trips_through_dict():
    cfg = maze_env.config_for_tiles("swap", wind_prob=0.0)
    assert MazeConfig.from_dict(copy.deepcopy(cfg.to_dict())) == cfg
    assert ACTIONS == ("N", "E", "S", "W")


@pytest.mark.parametrize(
    "module_name",
    [
        "maze_env",
        "maze_env.tiles",
        "maze_env.config",
        "maze_env.generate",
        "maze_env.text",
        "maze_env.env",
        "maze_env.batch",
        "maze_env.search",
        "maze_env.scripted",
    ],
)
def test_docstring_examples_run(module_name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module_name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("family", ["smollm2-135m-instruct", "gemma3-270m"])
def test_render_chat_leaves_the_final_move_open_for_every_bundled_template(family):
    from probes.models import load_tokenizer

    tok = load_tokenizer(family)
    trajs = maze_env.scripted_trajectories("gold", 3)
    text = maze_env.render_chat(tok, trajs[2].messages, close_final=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # The read position -1 is the final direction letter itself (paper §A.3).
    assert tok.decode(ids[-1:]).strip() == ACTIONS[trajs[2].final_action]
    closed = maze_env.render_chat(tok, trajs[2].messages, close_final=True)
    assert closed.startswith(text) and len(closed) > len(text)
    # Every user turn appears verbatim, in order, with no wind sentence.
    pos = 0
    for m in trajs[2].messages:
        pos = text.index(m["content"], pos)
    prompt = maze_env.render_chat(tok, trajs[2].messages[:-1], close_final=False)
    assert text.startswith(prompt)  # ends with the assistant header, ready for the next move


def test_replay_with_the_drawn_wind_repeats_step_exactly():
    from maze_env.env import MazeEnv

    config = maze_env.MazeConfig(size=20, wind_prob=0.5, n_turns=8)
    live, again = MazeEnv(config), MazeEnv(config)
    live.reset(seed=3)
    again.reset(seed=3)
    pushed = 0
    for action in [0, 1, 1, 2, 3, 3, 0, 2]:
        _, reward, _, truncated, info = live.step(action)
        wind = None if info["wind"] is None else info["wind"]["direction"]
        pushed += wind is not None
        _, replayed, _, replay_truncated, replay_info = again.replay(action, wind)
        assert (replayed, replay_truncated, replay_info["path"]) == (reward, truncated, info["path"])
        assert again.position == live.position and (again.grid == live.grid).all()
        assert len(info["path"]) == (1 if wind is None else 2)
    assert pushed > 0  # the wind blew at least once, so the push was replayed too
