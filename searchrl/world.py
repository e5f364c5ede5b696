"""A seeded generator of a fictional encyclopedia: the bundled world the CPU demo learns to search.

`generate_world(seed, ...)` returns entities (countries, cities, people, organisations, works) with attributes and
relations, one Wikipedia-style passage per entity (the retrieval corpus), and question sets with gold answers:
single-hop ("In which city was X born?"), two-hop compositional ("In which city was the founder of X born?") and
comparison ("Which was founded first, X or Y?"). Names are made of invented syllables, so a model's parametric
knowledge cannot answer. Same seed, same world, byte for byte. `write_world(dir, world)` writes
`corpus.jsonl` (id/title/text), `stage1.jsonl` (single-hop), `stage2.jsonl` (multi-hop + comparison) and
`test.jsonl` (held-out questions of every type) in R1-Searcher's {"idx","question","answer"} form, plus
`golden_answers` (aliases) and `type`. Pure apart from `write_world`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

_ONSETS = [
    "b",
    "br",
    "c",
    "d",
    "dr",
    "f",
    "g",
    "gl",
    "h",
    "k",
    "kr",
    "l",
    "m",
    "n",
    "p",
    "qu",
    "r",
    "s",
    "st",
    "t",
    "th",
    "tr",
    "v",
    "w",
    "z",
]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "ia"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "nd", "rk", "sh", "m", "x"]
_OCCUPATIONS = [
    "painter",
    "engineer",
    "botanist",
    "composer",
    "cartographer",
    "physician",
    "poet",
    "architect",
    "astronomer",
    "merchant",
]
_ORG_KINDS = ["Company", "Society", "Institute", "Guild", "Bank", "Press", "Observatory", "Works", "Academy"]
_WORK_KINDS = ["novel", "treatise", "opera", "atlas", "poem cycle"]
_RIVERS = 40


@dataclass
class Entity:
    id: str
    kind: str
    name: str
    attrs: dict[str, str | int] = field(default_factory=dict)


@dataclass
class Question:
    question: str
    answer: str
    golden_answers: list[str]
    type: str  # single_hop | two_hop | comparison


@dataclass
class World:
    entities: dict[str, Entity]
    passages: list[dict[str, str]]
    questions: list[Question]


class _Names:
    """Unique invented names."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: tuple[int, int] = (2, 3)) -> str:
        while True:
            n = self.rng.randint(*syllables)
            w = "".join(
                self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)
                for _ in range(n)
            ).capitalize()
            if w not in self.used and 4 <= len(w) <= 14:
                self.used.add(w)
                return w


def _build_entities(rng: random.Random, n_people: int) -> dict[str, Entity]:
    names = _Names(rng)
    ents: dict[str, Entity] = {}

    def add(kind: str, name: str, **attrs: str | int) -> Entity:
        e = Entity(f"{kind}{sum(1 for x in ents.values() if x.kind == kind)}", kind, name, dict(attrs))
        ents[e.id] = e
        return e

    countries = [add("country", names.word((2, 3))) for _ in range(max(8, n_people // 60))]
    rivers = [names.word((2, 2)) for _ in range(_RIVERS)]
    cities = [
        add("city", names.word(), country=c.id, river=rng.choice(rivers), founded=rng.randint(900, 1700))
        for c in countries
        for _ in range(rng.randint(4, 8))
    ]
    people = [
        add(
            "person",
            f"{names.word((1, 2))} {names.word()}",
            born_in=rng.choice(cities).id,
            born=rng.randint(1750, 1990),
            occupation=rng.choice(_OCCUPATIONS),
        )
        for _ in range(n_people)
    ]
    singles = people[:]
    rng.shuffle(singles)
    for a, b in zip(singles[0::2], singles[1::2], strict=False):
        if rng.random() < 0.6:
            a.attrs["spouse"], b.attrs["spouse"] = b.id, a.id
    for _ in range(n_people // 2):
        founder = rng.choice(people)
        add(
            "org",
            f"{names.word()} {rng.choice(_ORG_KINDS)}",
            founder=founder.id,
            located_in=rng.choice(cities).id,
            founded=int(founder.attrs["born"]) + rng.randint(20, 60),
        )
    for _ in range(n_people // 2):
        author = rng.choice(people)
        add(
            "work",
            f"The {names.word()} {names.word((1, 2))}",
            author=author.id,
            genre=rng.choice(_WORK_KINDS),
            year=int(author.attrs["born"]) + rng.randint(18, 70),
        )
    return ents


def _passage(e: Entity, ents: dict[str, Entity]) -> str:
    a, name = e.attrs, e.name
    if e.kind == "country":
        cities = [x.name for x in ents.values() if x.kind == "city" and x.attrs["country"] == e.id][:4]
        return f"{name} is a country. Its cities include {', '.join(cities)}."
    if e.kind == "city":
        return (
            f"{name} is a city in {ents[str(a['country'])].name}, on the river {a['river']}. "
            f"It was founded in {a['founded']}."
        )
    if e.kind == "person":
        # the country is not stated here: "In which country was X born?" needs the city's passage too
        text = f"{name} (born {a['born']}) is a {a['occupation']} born in {ents[str(a['born_in'])].name}."
        if "spouse" in a:
            text += f" {name.split()[0]} was married to {ents[str(a['spouse'])].name}."
        return text
    if e.kind == "org":
        return (
            f"The {name} is an organisation founded in {a['founded']} by {ents[str(a['founder'])].name}. "
            f"It is based in {ents[str(a['located_in'])].name}."
        )
    article = "an" if str(a["genre"])[0] in "aeiou" else "a"
    return f"{name} is {article} {a['genre']} written by {ents[str(a['author'])].name} and published in {a['year']}."


def _q(question: str, answer: str | int, qtype: str, aliases: list[str] | None = None) -> Question:
    return Question(question, str(answer), [str(answer), *(aliases or [])], qtype)


def _questions(rng: random.Random, ents: dict[str, Entity]) -> list[Question]:
    by = {k: [e for e in ents.values() if e.kind == k] for k in ("city", "person", "org", "work")}

    def name(eid: object) -> str:
        return ents[str(eid)].name

    qs: list[Question] = []
    for p in by["person"]:
        qs.append(_q(f"In which city was {p.name} born?", name(p.attrs["born_in"]), "single_hop"))
        qs.append(_q(f"In which year was {p.name} born?", p.attrs["born"], "single_hop"))
        if "spouse" in p.attrs:
            qs.append(_q(f"Who was {p.name} married to?", name(p.attrs["spouse"]), "single_hop"))
        qs.append(
            _q(
                f"In which country was {p.name} born?",
                name(ents[str(p.attrs["born_in"])].attrs["country"]),
                "two_hop",
            )
        )
    for c in by["city"]:
        qs.append(_q(f"Which country is {c.name} in?", name(c.attrs["country"]), "single_hop"))
    for o in by["org"]:
        founder = ents[str(o.attrs["founder"])]
        qs.append(_q(f"Who founded the {o.name}?", founder.name, "single_hop"))
        qs.append(_q(f"In which city is the {o.name} based?", name(o.attrs["located_in"]), "single_hop"))
        qs.append(
            _q(
                f"In which city was the founder of the {o.name} born?",
                name(founder.attrs["born_in"]),
                "two_hop",
            )
        )
    for w in by["work"]:
        author = ents[str(w.attrs["author"])]
        qs.append(_q(f"Who wrote {w.name}?", author.name, "single_hop"))
        qs.append(
            _q(f"In which city was the author of {w.name} born?", name(author.attrs["born_in"]), "two_hop")
        )
        if "spouse" in author.attrs:
            qs.append(
                _q(f"Who was the spouse of the author of {w.name}?", name(author.attrs["spouse"]), "two_hop")
            )
    orgs = by["org"]
    for _ in range(len(orgs)):
        a, b = rng.sample(orgs, 2)
        if a.attrs["founded"] != b.attrs["founded"]:
            first = a if int(a.attrs["founded"]) < int(b.attrs["founded"]) else b
            qs.append(
                _q(
                    f"Which was founded first, the {a.name} or the {b.name}?",
                    first.name,
                    "comparison",
                    [f"the {first.name}"],
                )
            )
    people = by["person"]
    for _ in range(len(people) // 2):
        a, b = rng.sample(people, 2)
        if a.attrs["born"] != b.attrs["born"]:
            first = a if int(a.attrs["born"]) < int(b.attrs["born"]) else b
            qs.append(_q(f"Who was born first, {a.name} or {b.name}?", first.name, "comparison"))
    return qs


def generate_world(seed: int = 0, n_people: int = 1200) -> World:
    rng = random.Random(seed)
    ents = _build_entities(rng, n_people)
    passages = [{"id": e.id, "title": e.name, "text": _passage(e, ents)} for e in ents.values()]
    return World(ents, passages, _questions(rng, ents))


def split_questions(world: World, seed: int = 0, n_test: int = 300) -> dict[str, list[Question]]:
    """Held-out test set of every type (by question), stage 1 = remaining single-hop, stage 2 = remaining
    two-hop + comparison."""
    qs = world.questions[:]
    random.Random(seed + 1).shuffle(qs)
    per_type = {t: [q for q in qs if q.type == t] for t in ("single_hop", "two_hop", "comparison")}
    test = [q for t in per_type.values() for q in t[: n_test // 3]]
    held = {id(q) for q in test}
    rest = [q for q in qs if id(q) not in held]
    return {
        "test": test,
        "stage1": [q for q in rest if q.type == "single_hop"],
        "stage2": [q for q in rest if q.type != "single_hop"],
    }


def write_world(directory: str | Path, world: World, seed: int = 0, n_test: int = 300) -> dict[str, Path]:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"corpus": d / "corpus.jsonl"}
    with paths["corpus"].open("w") as f:
        for p in world.passages:
            f.write(json.dumps(p) + "\n")
    for split, qs in split_questions(world, seed, n_test).items():
        paths[split] = d / f"{split}.jsonl"
        with paths[split].open("w") as f:
            for i, q in enumerate(qs):
                f.write(
                    json.dumps(
                        {
                            "idx": i,
                            "question": q.question,
                            "answer": q.answer,
                            "golden_answers": q.golden_answers,
                            "type": q.type,
                        }
                    )
                    + "\n"
                )
    return paths
