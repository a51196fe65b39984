"""The ``welfare-axis`` command line.

Examples:
    welfare-axis maze show --seed 0
    welfare-axis maze play --seed 0            # type N/E/S/W each turn
    welfare-axis maze play --seed 0 --expert   # watch the expert
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def _maze_config(args: argparse.Namespace):
    from maze_env import config_for_tiles

    overrides = {}
    if args.no_wind:
        overrides["wind_prob"] = 0.0
    if args.size is not None:
        overrides["size"] = args.size
    return config_for_tiles(args.tiles, **overrides)


def _maze_show(args: argparse.Namespace) -> int:
    from maze_env import MazeEnv

    env = MazeEnv(_maze_config(args), render_mode="ansi")
    obs, info = env.reset(seed=args.seed)
    counts = env.maze.counts()
    total = sum(counts.values())
    print(
        f"maze seed={args.seed} tiles={env.config.tiles.name} size={env.config.size} start={info['position']}"
    )
    print("interior: " + ", ".join(f"{k} {v} ({v / total:.1%})" for k, v in counts.items()))
    print(env.render_window(args.radius))
    print("\nfirst prompt:\n" + obs)
    return 0


def _maze_play(args: argparse.Namespace) -> int:
    from maze_env import ActionParseError, Expert, MazeEnv, parse_action
    from maze_env.dynamics import ACTIONS

    env = MazeEnv(_maze_config(args), render_mode="ansi")
    obs, _ = env.reset(seed=args.seed)
    expert = Expert(seed=args.seed) if args.expert else None
    scripted = list(args.actions) if args.actions else None
    total = 0.0
    while True:
        print(env.render_window(args.radius))
        print(obs)
        if expert is not None:
            action = expert.act(env)
            print(f"> {ACTIONS[action]} (expert)")
        elif scripted is not None:
            if not scripted:
                print("(out of scripted actions)")
                break
            action = parse_action(scripted.pop(0))
            print(f"> {ACTIONS[action]}")
        else:
            try:
                line = input("> ")
            except EOFError:
                print()
                break
            try:
                action = parse_action(line)
            except ActionParseError as err:
                print(f"  {err}")
                continue
        obs, reward, _, truncated, info = env.step(action)
        total += reward
        wind = f", wind pushed {info['wind']['name']}" if info["wind"] else ""
        print(
            f"  reward {reward:+.1f} (gold {info['delta_gold']}, mold {info['delta_mold']}{wind}); return {total:+.1f}\n"
        )
        if truncated:
            break
    print(f"episode return {total:+.1f} after {env.turn} turns")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="welfare-axis", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    maze = sub.add_parser("maze", help="look at and play the text maze").add_subparsers(
        dest="maze_command", required=True
    )
    for name, handler, help_text in (
        ("show", _maze_show, "print a maze and its first prompt"),
        ("play", _maze_play, "play an episode"),
    ):
        p = maze.add_parser(name, help=help_text)
        p.add_argument("--seed", type=int, default=0, help="maze seed")
        p.add_argument("--tiles", default="office", choices=["office", "swap", "shuffle"], help="tile set")
        p.add_argument("--size", type=int, default=None, help="grid size (default 100)")
        p.add_argument("--no-wind", action="store_true", help="turn the wind off")
        p.add_argument("--radius", type=int, default=5, help="radius of the ASCII view")
        if name == "play":
            p.add_argument("--expert", action="store_true", help="let the expert play")
            p.add_argument("--actions", default=None, help="play these letters, e.g. NNESW")
        p.set_defaults(handler=handler)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Subcommands contributed by other modules (training, the study pipeline)."""
    registrars = []
    for module_name in ("welfare_axis.commands", "welfare_axis.study_cli"):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        registrars.append(module.register)
    return registrars


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError) as err:
        message = (
            err.args[0] if isinstance(err, KeyError) and err.args else err
        )  # KeyError's str() adds quotes
        print(f"welfare-axis: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
