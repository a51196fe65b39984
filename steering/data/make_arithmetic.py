"""Generate ``arithmetic.jsonl``: grade-school word problems (1-3 steps) with integer answers.

Each template is a small function that draws names and quantities from a seeded ``random.Random``,
writes the problem as plain English and computes the answer from the same numbers, so every
answer is right by construction. Problems are deduplicated by text; ids follow file order.

Run from the repository root to rewrite the shipped file (it is deterministic for a given seed):

    python -m steering.data.make_arithmetic            # writes probes/data/arithmetic.jsonl

Example:
    >>> problems = generate(n=3, seed=0)
    >>> sorted(problems[0])
    ['answer', 'id', 'question', 'steps', 'template']
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from probes.artifacts import write_text
from steering.data import dataset_path

DEFAULT_N = 200
DEFAULT_SEED = 474747
OUTPUT = dataset_path("arithmetic")
"""``probes/data/arithmetic.jsonl`` (probes grades the model's answers to it; steering reads it there)."""

# (name, subject pronoun, possessive pronoun)
PEOPLE = [
    ("Maya", "she", "her"),
    ("Liam", "he", "his"),
    ("Aisha", "she", "her"),
    ("Tom", "he", "his"),
    ("Sofia", "she", "her"),
    ("Kenji", "he", "his"),
    ("Priya", "she", "her"),
    ("Carlos", "he", "his"),
    ("Emma", "she", "her"),
    ("Omar", "he", "his"),
    ("Grace", "she", "her"),
    ("Noah", "he", "his"),
    ("Lena", "she", "her"),
    ("Daniel", "he", "his"),
    ("Zoe", "she", "her"),
    ("Ravi", "he", "his"),
]
# (singular, plural) for countable things a person might own, buy or share
THINGS = [
    ("apple", "apples"),
    ("pencil", "pencils"),
    ("marble", "marbles"),
    ("sticker", "stickers"),
    ("cookie", "cookies"),
    ("book", "books"),
    ("balloon", "balloons"),
    ("toy car", "toy cars"),
    ("orange", "oranges"),
    ("trading card", "trading cards"),
    ("seashell", "seashells"),
    ("crayon", "crayons"),
]
# (singular, plural) for things sold at a fixed whole-dollar price
GOODS = [
    ("notebook", "notebooks", 2, 6),
    ("sandwich", "sandwiches", 4, 9),
    ("T-shirt", "T-shirts", 8, 15),
    ("comic book", "comic books", 3, 7),
    ("bag of rice", "bags of rice", 5, 12),
    ("movie ticket", "movie tickets", 7, 14),
    ("plant pot", "plant pots", 3, 8),
]
# things that are sold in packs of several
PACKABLE = [
    ("pencil", "pencils"),
    ("marble", "marbles"),
    ("sticker", "stickers"),
    ("cookie", "cookies"),
    ("balloon", "balloons"),
    ("trading card", "trading cards"),
    ("crayon", "crayons"),
]
PLANTS = ["tomato plants", "sunflowers", "carrots", "lettuces", "strawberry plants", "cabbages"]
CONTAINERS = [("box", "boxes"), ("bag", "bags"), ("basket", "baskets")]

Template = Callable[[random.Random], tuple[str, int, int]]
"""``template(rng) -> (question, answer, steps)``."""


def _two_people(rng: random.Random) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    a, b = rng.sample(PEOPLE, 2)
    return a, b


def buy_more(rng: random.Random) -> tuple[str, int, int]:
    (name, he, _), thing = rng.choice(PEOPLE), rng.choice(THINGS)
    a, b = rng.randint(5, 40), rng.randint(3, 30)
    q = f"{name} has {a} {thing[1]}. Then {he} gets {b} more. How many {thing[1]} does {name} have now?"
    return q, a + b, 1


def give_away(rng: random.Random) -> tuple[str, int, int]:
    (name, _, _), (friend, _, _) = _two_people(rng)
    thing = rng.choice(THINGS)
    a = rng.randint(12, 60)
    b = rng.randint(2, a - 3)
    q = f"{name} had {a} {thing[1]} and gave {b} of them to {friend}. How many {thing[1]} does {name} have left?"
    return q, a - b, 1


def packs(rng: random.Random) -> tuple[str, int, int]:
    (name, he, _), thing = rng.choice(PEOPLE), rng.choice(PACKABLE)
    n, k = rng.randint(2, 9), rng.randint(3, 12)
    q = (
        f"{name} buys {n} packs of {thing[1]}. Each pack has {k} {thing[1]}. "
        f"How many {thing[1]} does {he} buy in total?"
    )
    return q, n * k, 1


def share_equally(rng: random.Random) -> tuple[str, int, int]:
    (name, _, _), thing = rng.choice(PEOPLE), rng.choice(THINGS)
    friends, each = rng.randint(2, 8), rng.randint(2, 12)
    q = (
        f"{name} shares {friends * each} {thing[1]} equally among {friends} friends. "
        f"How many {thing[1]} does each friend get?"
    )
    return q, each, 1


def change_from_bill(rng: random.Random) -> tuple[str, int, int]:
    (name, he, _), (one, many, lo, hi) = rng.choice(PEOPLE), rng.choice(GOODS)
    price, n = rng.randint(lo, hi), rng.randint(2, 5)
    bill = next(b for b in (20, 50, 100) if b > price * n)
    q = (
        f"A {one} costs ${price}. {name} buys {n} {many} and pays with a ${bill} bill. "
        f"How much change, in dollars, does {he} get?"
    )
    return q, bill - price * n, 2


def pages_left(rng: random.Random) -> tuple[str, int, int]:
    name, he, _ = rng.choice(PEOPLE)
    per_day, days = rng.randint(5, 25), rng.randint(2, 7)
    total = per_day * days + rng.randint(10, 120)
    q = (
        f"{name}'s book has {total} pages. {he.capitalize()} reads {per_day} pages every day for {days} days. "
        f"How many pages are left to read?"
    )
    return q, total - per_day * days, 2


def wages(rng: random.Random) -> tuple[str, int, int]:
    name, he, _ = rng.choice(PEOPLE)
    rate, h1, h2 = rng.randint(8, 20), rng.randint(2, 8), rng.randint(2, 8)
    q = (
        f"{name} earns ${rate} an hour. {he.capitalize()} works {h1} hours on Monday and {h2} hours on Tuesday. "
        f"How many dollars does {he} earn on those two days?"
    )
    return q, rate * (h1 + h2), 2


def garden_rows(rng: random.Random) -> tuple[str, int, int]:
    plant = rng.choice(PLANTS)
    rows, per_row = rng.randint(3, 9), rng.randint(4, 12)
    lost = rng.randint(2, rows * per_row // 3)
    q = (
        f"A farmer plants {rows} rows of {plant} with {per_row} in each row. "
        f"{lost} of them do not survive. How many {plant} are left?"
    )
    return q, rows * per_row - lost, 2


def sibling_age(rng: random.Random) -> tuple[str, int, int]:
    name, _, his = rng.choice(PEOPLE)
    age, gap, years = rng.randint(5, 15), rng.randint(2, 9), rng.randint(2, 10)
    sibling = rng.choice(["brother", "sister", "cousin"])
    q = (
        f"{name} is {age} years old. {his.capitalize()} {sibling} is {gap} years older. "
        f"How old will the {sibling} be in {years} years?"
    )
    return q, age + gap + years, 2


def bus_stop(rng: random.Random) -> tuple[str, int, int]:
    start = rng.randint(15, 50)
    off, on = rng.randint(2, start - 5), rng.randint(2, 20)
    q = (
        f"A bus has {start} passengers. At the next stop, {off} people get off and {on} people get on. "
        f"How many passengers are on the bus now?"
    )
    return q, start - off + on, 2


def baking(rng: random.Random) -> tuple[str, int, int]:
    name, he, _ = rng.choice(PEOPLE)
    trays, per_tray = rng.randint(2, 5), rng.randint(6, 12)
    eaten, given = rng.randint(1, 5), rng.randint(3, 10)
    q = (
        f"{name} bakes {trays} trays of muffins with {per_tray} muffins on each tray. "
        f"{he.capitalize()} eats {eaten} and gives {given} to {rng.choice(['neighbours', 'classmates', 'friends'])}. "
        f"How many muffins are left?"
    )
    return q, trays * per_tray - eaten - given, 3


def saving_weeks(rng: random.Random) -> tuple[str, int, int]:
    name, he, _ = rng.choice(PEOPLE)
    per_week, weeks = rng.randint(3, 15), rng.randint(3, 12)
    item = rng.choice(["a bike", "a video game", "a pair of shoes", "a guitar", "a tent"])
    q = f"{name} saves ${per_week} every week. How many weeks will it take {name} to save ${per_week * weeks} for {item}?"
    return q, weeks, 1


def twice_as_many(rng: random.Random) -> tuple[str, int, int]:
    (name, _, _), (friend, _, _) = _two_people(rng)
    thing = rng.choice(THINGS)
    a = rng.randint(4, 30)
    factor, word = rng.choice([(2, "twice"), (3, "three times")])
    q = f"{name} has {a} {thing[1]}. {friend} has {word} as many. How many {thing[1]} do they have together?"
    return q, a + factor * a, 2


def half_then_more(rng: random.Random) -> tuple[str, int, int]:
    (name, _, _), (friend, _, _) = _two_people(rng)
    thing = rng.choice(THINGS)
    half, more = rng.randint(4, 25), rng.randint(2, 15)
    q = (
        f"{name} had {2 * half} {thing[1]} and gave half of them to {friend}. "
        f"Then {name} got {more} more. How many {thing[1]} does {name} have now?"
    )
    return q, half + more, 2


def farm_legs(rng: random.Random) -> tuple[str, int, int]:
    birds, beasts = rng.randint(2, 15), rng.randint(2, 12)
    bird, beast = rng.choice(["chickens", "ducks", "geese"]), rng.choice(["cows", "goats", "sheep", "pigs"])
    q = f"A farm has {birds} {bird} and {beasts} {beast}. How many legs do these animals have altogether?"
    return q, 2 * birds + 4 * beasts, 2


def practice_minutes(rng: random.Random) -> tuple[str, int, int]:
    name, he, _ = rng.choice(PEOPLE)
    minutes, weeks = rng.choice([10, 15, 20, 25, 30, 40, 45]), rng.randint(1, 4)
    hobby = rng.choice(["the piano", "the violin", "football", "drawing", "chess"])
    verb = "plays" if hobby in ("football", "chess") else "practises"
    q = (
        f"{name} {verb} {hobby} for {minutes} minutes every day. "
        f"How many minutes does {he} spend on it in {weeks} {'week' if weeks == 1 else 'weeks'}?"
    )
    return q, minutes * 7 * weeks, 2


def tickets(rng: random.Random) -> tuple[str, int, int]:
    adult, child = rng.randint(8, 20), rng.randint(3, 7)
    n_adults, n_children = rng.randint(1, 4), rng.randint(1, 5)
    place = rng.choice(["the zoo", "the museum", "the cinema", "the aquarium", "the water park"])
    q = (
        f"Tickets to {place} cost ${adult} for adults and ${child} for children. "
        f"How many dollars do {n_adults} {'adult' if n_adults == 1 else 'adults'} and "
        f"{n_children} {'child' if n_children == 1 else 'children'} pay in total?"
    )
    return q, adult * n_adults + child * n_children, 3


def fill_containers(rng: random.Random) -> tuple[str, int, int]:
    (name, he, _), thing = rng.choice(PEOPLE), rng.choice(THINGS)
    one, many = rng.choice(CONTAINERS)
    per, n = rng.randint(3, 12), rng.randint(2, 10)
    q = (
        f"{name} packs {per * n} {thing[1]} into {many} that hold {per} {thing[1]} each. "
        f"How many {many} does {he} fill?"
    )
    return q, n, 1


def spend_from_savings(rng: random.Random) -> tuple[str, int, int]:
    name, he, _ = rng.choice(PEOPLE)
    (one, many, lo, hi) = rng.choice(GOODS)
    price, n = rng.randint(lo, hi), rng.randint(2, 4)
    savings = price * n + rng.randint(5, 40)
    q = (
        f"{name} has ${savings}. {he.capitalize()} buys {n} {many} that cost ${price} each. "
        f"How many dollars does {he} have left?"
    )
    return q, savings - price * n, 2


def classroom(rng: random.Random) -> tuple[str, int, int]:
    classes, per_class, absent = rng.randint(2, 6), rng.randint(18, 30), rng.randint(2, 9)
    q = (
        f"A school has {classes} classes with {per_class} students in each class. "
        f"Today {absent} students are absent. How many students are at school today?"
    )
    return q, classes * per_class - absent, 2


def distance(rng: random.Random) -> tuple[str, int, int]:
    name, he, _ = rng.choice(PEOPLE)
    speed, hours = rng.choice([40, 45, 50, 60, 70, 80]), rng.randint(2, 5)
    q = f"{name} drives at {speed} kilometres per hour for {hours} hours. How many kilometres does {he} travel?"
    return q, speed * hours, 1


TEMPLATES: dict[str, Template] = {
    f.__name__: f
    for f in (
        buy_more,
        give_away,
        packs,
        share_equally,
        change_from_bill,
        pages_left,
        wages,
        garden_rows,
        sibling_age,
        bus_stop,
        baking,
        saving_weeks,
        twice_as_many,
        half_then_more,
        farm_legs,
        practice_minutes,
        tickets,
        fill_containers,
        spend_from_savings,
        classroom,
        distance,
    )
}
"""Every template by name; :func:`generate` cycles through them in this order."""


def generate(n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """Return ``n`` distinct problems ``{"id", "question", "answer", "steps", "template"}``.

    Templates are used round-robin so every kind of problem is represented; a draw that repeats an
    earlier question is redrawn.

    Example:
        >>> p = generate(n=1, seed=1)[0]
        >>> p["template"], isinstance(p["answer"], int)
        ('buy_more', True)
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    rng = random.Random(seed)
    names = list(TEMPLATES)
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 100 * n:
            raise RuntimeError(f"could not draw {n} distinct problems; lower n (got {n})")
        name = names[len(problems) % len(names)]
        question, answer, steps = TEMPLATES[name](rng)
        if question in seen:
            continue
        if answer < 0:
            raise AssertionError(f"template {name} produced a negative answer for {question!r}")
        seen.add(question)
        problems.append(
            {
                "id": f"arith-{len(problems) + 1:03d}",
                "question": question,
                "answer": answer,
                "steps": steps,
                "template": name,
            }
        )
    return problems


def write(path: Path = OUTPUT, n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> Path:
    """Write :func:`generate`'s problems as JSONL atomically and return the path."""
    lines = [json.dumps(problem, ensure_ascii=False) + "\n" for problem in generate(n, seed)]
    return write_text(path, "".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="number of problems")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument("--out", type=Path, default=OUTPUT, help="output JSONL path")
    args = parser.parse_args()
    print(write(args.out, args.n, args.seed))


if __name__ == "__main__":
    main()
