"""Checks on the hand-written text datasets shipped in ``probes/data/``.

These files drive the emotion vectors (Sofroniew recipe), the sentiment axes, the logit-lens
failure-token score and the forgetting (perplexity) measurement, so their schema, counts and
the "never name the emotion" rule are tested here.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "probes" / "data"

# Word-boundary regexes (case-insensitive) that a story of each emotion must not contain:
# the emotion word, its inflections and close synonyms. Every emotion in emotions.jsonl must
# have an entry here, so a newly added emotion cannot skip the check.
BANNED: dict[str, list[str]] = {
    "happy": [r"happ(y|ier|iest|ily|iness)", r"unhapp\w*", r"glad\w*", r"cheerful\w*"],
    "joyful": [r"joy\w*", r"elat(ed|ion)", r"jubila\w*", r"happ(y|ier|iest|ily|iness)", r"glad\w*"],
    "proud": [r"proud\w*", r"pride"],
    "grateful": [r"grateful\w*", r"gratitude", r"thank\w*", r"appreciat\w*"],
    "inspired": [r"inspir\w*", r"motivat\w*"],
    "calm": [r"calm\w*", r"tranquil\w*", r"peaceful\w*", r"placid\w*", r"relax\w*", r"seren\w*"],
    "content": [r"content\w*", r"satisf\w*"],
    "relieved": [r"reliev\w*", r"relief"],
    "hopeful": [r"hope\w*", r"hoping", r"optimis\w*"],
    "loving": [r"lov\w*", r"ador\w*", r"affection\w*", r"fond\w*", r"cherish\w*"],
    "amused": [r"amus\w*", r"entertain\w*"],
    "excited": [r"excit\w*", r"thrill\w*"],
    "blissful": [r"bliss\w*", r"ecsta\w*", r"euphori\w*", r"raptur\w*"],
    "fulfilled": [r"fulfil\w*", r"satisf\w*"],
    "serene": [r"seren\w*", r"tranquil\w*", r"peaceful\w*", r"calm\w*", r"placid\w*"],
    "curious": [r"curio\w*", r"intrigu\w*", r"inquisitiv\w*"],
    "surprised": [r"surpris\w*", r"astonish\w*", r"amaz\w*", r"startl\w*", r"shock\w*"],
    "nostalgic": [r"nostalg\w*", r"reminisc\w*"],
    "bored": [r"bor(ed|ing|edom|edly)", r"tedi\w*", r"dull\w*"],
    "tired": [r"tir(ed|ing|edness|esome)", r"exhaust\w*", r"wear(y|ier|iness|ily)", r"fatigu\w*", r"sleepy"],
    "sad": [r"sad\w*", r"sorrow\w*", r"unhapp\w*", r"depress\w*", r"melanchol\w*"],
    "lonely": [r"lonel\w*", r"lonesome", r"alone"],
    "grieving": [r"griev\w*", r"grief\w*", r"mourn\w*", r"bereav\w*"],
    "disappointed": [r"disappoint\w*", r"letdown"],
    "ashamed": [r"asham\w*", r"shame\w*"],
    "embarrassed": [r"embarrass\w*", r"mortif\w*"],
    "guilty": [r"guilt\w*", r"remorse\w*"],
    "humiliated": [r"humiliat\w*", r"mortif\w*", r"degrad\w*"],
    "anxious": [r"anxi\w*", r"worr\w*", r"uneas\w*"],
    "afraid": [r"afraid", r"fear\w*", r"scar(ed|y)"],
    "terrified": [r"terrif\w*", r"terror\w*", r"horrif\w*", r"fear\w*", r"scar(ed|y)", r"afraid"],
    "nervous": [r"nerv(e|es|ous|ously|ousness)", r"jitter\w*", r"jumpy"],
    "angry": [r"ang(er|ry|rily|ered|rier)", r"furious\w*", r"fury", r"rag(e|ed|es|ing)", r"enrag\w*", r"mad"],
    "annoyed": [r"annoy\w*", r"irritat\w*"],
    "irritated": [r"irritat\w*", r"annoy\w*"],
    "frustrated": [r"frustrat\w*"],
    "exasperated": [r"exasperat\w*"],
    "offended": [r"offen(d|ded|ds|ce|se|sive)"],
    "insulted": [r"insult\w*"],
    "disgusted": [r"disgust\w*", r"revolt\w*", r"repuls\w*", r"gross"],
    "jealous": [r"jealous\w*", r"env(y|ied|ies|ious|iously)"],
    "resentful": [r"resent\w*", r"bitter\w*"],
    "desperate": [r"desperat\w*", r"despair\w*"],
    "hopeless": [r"hope\w*", r"hoping", r"despair\w*"],
    "confused": [r"confus\w*", r"baffl\w*", r"bewilder\w*", r"perplex\w*", r"puzzl\w*"],
    "determined": [r"determin\w*", r"resolut\w*", r"resolve\w*"],
    "playful": [r"playful\w*", r"mischiev\w*"],
    "hostile": [r"hostil\w*", r"antagon\w*"],
}


def _banned_regex(emotion: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(BANNED[emotion]) + r")\b", re.IGNORECASE)


def _jsonl(name: str) -> list[dict]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    assert all(line.strip() for line in lines), f"{name} has blank lines"
    return [json.loads(line) for line in lines]


def _words(text: str) -> int:
    return len(text.split())


# ----------------------------------------------------------------------------- emotions


@pytest.fixture(scope="module")
def emotions() -> list[dict]:
    return _jsonl("emotions.jsonl")


def test_emotions_schema(emotions: list[dict]) -> None:
    for row in emotions:
        assert set(row) == {"emotion", "valence", "arousal", "story"}, row
        assert isinstance(row["emotion"], str) and row["emotion"] == row["emotion"].strip().lower()
        assert isinstance(row["story"], str)
        for key in ("valence", "arousal"):
            assert isinstance(row[key], float) and -1.0 <= row[key] <= 1.0, row


def test_emotions_counts_and_uniqueness(emotions: list[dict]) -> None:
    per_emotion = Counter(row["emotion"] for row in emotions)
    assert len(per_emotion) >= 44
    assert min(per_emotion.values()) >= 12, per_emotion.most_common()[-3:]
    stories = [row["story"] for row in emotions]
    assert len(set(stories)) == len(stories)
    # No story is reused with only case/space changes either.
    assert len({" ".join(s.lower().split()) for s in stories}) == len(stories)


def test_emotions_story_length(emotions: list[dict]) -> None:
    for row in emotions:
        assert 40 <= _words(row["story"]) <= 90, (row["emotion"], _words(row["story"]), row["story"][:60])
        n_sentences = len(re.findall(r"[.!?][\"']?(?:\s|$)", row["story"]))
        assert 3 <= n_sentences <= 6, (row["emotion"], row["story"][:60])


def test_emotions_valence_arousal_consistent_and_spread(emotions: list[dict]) -> None:
    coords: dict[str, set[tuple[float, float]]] = defaultdict(set)
    for row in emotions:
        coords[row["emotion"]].add((row["valence"], row["arousal"]))
    assert all(len(c) == 1 for c in coords.values()), {e: c for e, c in coords.items() if len(c) > 1}
    valence = [next(iter(c))[0] for c in coords.values()]
    arousal = [next(iter(c))[1] for c in coords.values()]
    assert sum(v > 0 for v in valence) >= 15 and sum(v < 0 for v in valence) >= 15
    assert min(arousal) <= -0.6 and max(arousal) >= 0.6
    assert statistics.pstdev(arousal) > 0.3
    # All four quadrants of the circumplex are populated.
    quadrants = {(v > 0, a > 0) for v, a in zip(valence, arousal, strict=True)}
    assert quadrants == {(True, True), (True, False), (False, True), (False, False)}


def test_emotions_known_anchor_values(emotions: list[dict]) -> None:
    coords = {row["emotion"]: (row["valence"], row["arousal"]) for row in emotions}
    assert coords["happy"][0] > 0.5 and coords["sad"][0] < -0.5
    assert coords["terrified"][1] > coords["afraid"][1] > 0
    assert coords["calm"][1] < -0.5 and coords["serene"][1] < -0.5
    assert coords["excited"][1] > coords["content"][1]


def test_every_emotion_has_a_banned_list(emotions: list[dict]) -> None:
    missing = {row["emotion"] for row in emotions} - set(BANNED)
    assert not missing, f"add banned-word patterns for {sorted(missing)}"


def test_stories_never_name_their_emotion(emotions: list[dict]) -> None:
    offenders = []
    for row in emotions:
        match = _banned_regex(row["emotion"]).search(row["story"])
        if match:
            offenders.append((row["emotion"], match.group(0), row["story"][:60]))
    assert not offenders, offenders


def test_banned_regex_catches_inflections() -> None:
    # The checker itself must work: inflections and synonyms are caught, word boundaries hold.
    assert _banned_regex("sad").search("She felt a deep Sadness.")
    assert _banned_regex("angry").search("He answered angrily.")
    assert _banned_regex("afraid").search("the dog was scared")
    assert _banned_regex("tired").search("she was Exhausted")
    assert not _banned_regex("tired").search("he retired last year")
    assert not _banned_regex("angry").search("a triangle made of glass")


# ----------------------------------------------------------------------------- neutral


def test_neutral_texts() -> None:
    rows = _jsonl("neutral.jsonl")
    assert len(rows) >= 80
    texts = [row["text"] for row in rows]
    assert all(set(row) == {"text"} and isinstance(row["text"], str) for row in rows)
    assert len(set(texts)) == len(texts)
    for text in texts:
        assert 30 <= _words(text) <= 90, (_words(text), text[:60])
    # Neutral passages name no emotion at all (any emotion's banned patterns).
    every = re.compile(r"\b(?:" + "|".join(p for pats in BANNED.values() for p in pats) + r")\b", re.I)
    hits = [(m.group(0), t[:50]) for t in texts if (m := every.search(t))]
    assert not hits, hits


# ----------------------------------------------------------------------------- sentiment


def test_sentiment_schema_balance_and_pairs() -> None:
    rows = _jsonl("sentiment.jsonl")
    assert len(rows) >= 160
    for row in rows:
        assert set(row) == {"text", "label", "pair_id", "domain"}, row
        assert row["label"] in {"positive", "negative"}
        assert all(isinstance(row[k], str) and row[k] for k in row)
    labels = Counter(row["label"] for row in rows)
    assert labels["positive"] == labels["negative"]
    texts = [row["text"] for row in rows]
    assert len(set(texts)) == len(texts)
    pairs: dict[str, dict[str, str]] = defaultdict(dict)
    for row in rows:
        assert row["label"] not in pairs[row["pair_id"]], f"duplicate label in {row['pair_id']}"
        pairs[row["pair_id"]][row["label"]] = row["text"]
    for pair_id, pair in pairs.items():
        assert set(pair) == {"positive", "negative"}, pair_id
        # Counterfactual pairs: minimal edits, so the two sides share much of their wording.
        pos = set(re.findall(r"[a-z']+", pair["positive"].lower()))
        neg = set(re.findall(r"[a-z']+", pair["negative"].lower()))
        assert len(pos & neg) / len(pos | neg) >= 0.25, pair_id
    assert len({row["domain"] for row in rows}) >= 5


# ----------------------------------------------------------------------------- word lists


@pytest.mark.parametrize("name", ["failure_words.txt", "success_words.txt"])
def test_word_lists(name: str) -> None:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    assert 75 <= len(lines) <= 120
    assert all(line == line.strip() and line for line in lines)
    assert all(line == line.lower() for line in lines)
    assert all(len(line.split()) <= 3 for line in lines)
    assert len(set(lines)) == len(lines)


def test_word_lists_are_disjoint_and_contain_anchors() -> None:
    failure = set((DATA / "failure_words.txt").read_text(encoding="utf-8").splitlines())
    success = set((DATA / "success_words.txt").read_text(encoding="utf-8").splitlines())
    assert not failure & success
    assert {"cannot", "impossible", "unable", "failed", "does not exist"} <= failure
    assert {"success", "possible", "can", "great", "yes"} <= success


# ----------------------------------------------------------------------------- general text


def test_general_text() -> None:
    rows = _jsonl("general_text.jsonl")
    assert len(rows) >= 60
    domains = Counter(row["domain"] for row in rows)
    assert {"encyclopedic", "news", "instructions", "dialogue", "fiction", "science"} <= set(domains)
    assert min(domains.values()) >= 5
    texts = [row["text"] for row in rows]
    assert len(set(texts)) == len(texts)
    for row in rows:
        assert set(row) == {"text", "domain"}
        assert 80 <= _words(row["text"]) <= 150, (_words(row["text"]), row["text"][:60])


def test_no_text_shared_between_files() -> None:
    seen: dict[str, str] = {}
    for name, key in [
        ("emotions.jsonl", "story"),
        ("neutral.jsonl", "text"),
        ("sentiment.jsonl", "text"),
        ("general_text.jsonl", "text"),
    ]:
        for row in _jsonl(name):
            text = " ".join(row[key].lower().split())
            assert text not in seen, f"{name} repeats a text from {seen.get(text)}"
            seen[text] = name
