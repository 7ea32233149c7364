"""``hover``: multi-hop claim verification over a generated encyclopedia, with a search tool.

HoVer-style: a claim about fictional people, towns, rivers and companies is SUPPORTED or NOT_SUPPORTED
by the corpus, and the model can only know by calling ``search``. The corpus is generated from the
seed (the same for every level and split), so nothing is memorised from pre-training.

    >>> task = get_task("hover", level=2, seed=0)
    >>> ex = task.examples("val", 1)[0]
    >>> ex.inputs["question"]                      # 'The founder of Quillon Works was born in Brixholm.'
    >>> task.tool_impls()["search"]("Quillon Works")
    'Quillon Works: a company. Founded by Alda Venmark in 1932. Headquartered in Brixholm.'

Levels = hops = how many entities must be looked up:
  1  the fact is in the search result of the entity the claim names    ("Alda Venmark was born in Brixholm.")
  2  two lookups                                                        ("The founder of X was born in T.")
  3  three lookups                                                      ("The founder of X was born in a town on R.")
Labels are balanced: examples alternate SUPPORTED / NOT_SUPPORTED. A NOT_SUPPORTED claim swaps the
final value for another of the same kind, so it is false in the corpus, never just unknown.

Scoring: ``Answer: SUPPORTED`` or ``Answer: NOT_SUPPORTED`` (case, spaces, hyphens are normalised).
Feedback says whether the search tool was used, which entities the claim needed looked up, which
lookups were off the claim's chain, and any tool-call errors.
"""

from __future__ import annotations

import difflib
import random
import re
from dataclasses import dataclass, field

from fst_lab.tasks.base import Score, extract_answer, register_task
from fst_lab.tasks.common import GeneratedTask, length_note, missing_answer_feedback

LABELS = ("SUPPORTED", "NOT_SUPPORTED")

_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "qu", "r", "s", "st", "t",
           "th", "v", "w", "z"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou"]
_CODAS = ["", "n", "r", "l", "s", "m", "th", "x", "nd", "rk"]
_TOWN_SUFFIX = ["holm", "ford", "by", "wick", "stad", "mere", "ton", "vale", "bury", "haven"]
_COMPANY_SUFFIX = ["Works", "Mills", "Foundry", "Labs", "Shipping", "Textiles", "Press", "Motors", "Brewing",
                   "Instruments"]
_OCCUPATIONS = ["painter", "engineer", "baker", "sailor", "teacher", "chemist", "architect", "poet", "surgeon",
                "carpenter", "astronomer", "merchant"]
_REGIONS = ["Norland", "Estmark", "Valdria", "Sorrow Coast", "the Highmoor", "Westreach"]
_SEAS = ["the Amber Sea", "the Grey Sea", "the Bright Ocean", "the Cold Gulf"]


def _word(rng: random.Random, syllables: int) -> str:
    s = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(_CODAS)
    return s.capitalize()


@dataclass
class Entity:
    name: str
    kind: str  # person | town | river | company
    facts: dict = field(default_factory=dict)

    def describe(self) -> str:
        f = self.facts
        if self.kind == "person":
            return f"{self.name}: a person. Born in {f['born_in']}. Works as {_a(f['occupation'])}."
        if self.kind == "town":
            return f"{self.name}: a town in {f['region']}. It lies on {f['river']}."
        if self.kind == "river":
            return f"{self.name}: a river. It flows into {f['flows_into']}."
        return (f"{self.name}: a company. Founded by {f['founded_by']} in {f['founded_in']}. "
                f"Headquartered in {f['headquarters']}.")


class Corpus:
    """A seeded encyclopedia: people, towns, rivers, companies, each with functional facts."""

    def __init__(self, seed: int = 0, n_people: int = 120, n_towns: int = 40, n_rivers: int = 12,
                 n_companies: int = 60):
        rng = random.Random(f"hover-corpus|seed={seed}")
        used: set[str] = set()

        def fresh(make):
            while True:
                name = make()
                key = _norm(name)
                if key not in used and not any(key in u or u in key for u in used):
                    used.add(key)
                    return name

        self.rivers = [Entity(fresh(lambda: f"the {_word(rng, 2)} River"), "river",
                              {"flows_into": rng.choice(_SEAS)}) for _ in range(n_rivers)]
        self.towns = [Entity(fresh(lambda: _word(rng, 1) + rng.choice(_TOWN_SUFFIX)), "town",
                             {"region": rng.choice(_REGIONS), "river": rng.choice(self.rivers).name})
                      for _ in range(n_towns)]
        self.people = [Entity(fresh(lambda: f"{_word(rng, 2)} {_word(rng, 2)}"), "person",
                              {"born_in": rng.choice(self.towns).name, "occupation": rng.choice(_OCCUPATIONS)})
                       for _ in range(n_people)]
        self.companies = [Entity(fresh(lambda: f"{_word(rng, 2)} {rng.choice(_COMPANY_SUFFIX)}"), "company",
                                 {"founded_by": rng.choice(self.people).name, "founded_in": rng.randint(1850, 1990),
                                  "headquarters": rng.choice(self.towns).name})
                          for _ in range(n_companies)]
        self.entities = self.rivers + self.towns + self.people + self.companies
        self.by_name = {e.name: e for e in self.entities}
        self._by_norm = {_norm(e.name): e for e in self.entities}

    def resolve(self, query: str, limit: int = 3) -> list[Entity]:
        """Fuzzy lookup: exact (case-insensitive), then substring either way, then shared words, then close."""
        q = _norm(query)
        if not q:
            return []
        if q in self._by_norm:
            return [self._by_norm[q]]
        hits = [e for k, e in self._by_norm.items() if q in k or k in q]
        if not hits:
            words = {w for w in q.split() if len(w) >= 4}
            hits = [e for k, e in self._by_norm.items() if words & set(k.split())]
        if not hits:
            close = difflib.get_close_matches(q, list(self._by_norm), n=limit, cutoff=0.75)
            hits = [self._by_norm[k] for k in close]
        return hits[:limit]

    def search(self, query: str) -> str:
        hits = self.resolve(query)
        if not hits:
            return f"No results for '{query}'."
        return "\n".join(e.describe() for e in hits)


def _a(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _norm(s: str) -> str:
    s = re.sub(r"[^a-z0-9 ]+", " ", str(s).lower())
    s = re.sub(r"\b(the|river)\b", " ", s)
    return " ".join(s.split())


def normalise_label(text: str | None) -> str | None:
    """'not supported' / 'Not-Supported' / 'NOT_SUPPORTED' -> 'NOT_SUPPORTED'; anything else -> None."""
    if text is None:
        return None
    t = re.sub(r"[\s\-]+", "_", text.strip().strip("*`'\".").upper())
    t = re.sub(r"_+", "_", t).strip("_")
    return t if t in LABELS else None


@register_task("hover")
class HoverTask(GeneratedTask):
    """Claim verification with a ``search`` tool over a generated corpus; see the module docstring."""

    name = "hover"
    levels = (1, 2, 3)
    answer_format = "End with a line 'Answer: SUPPORTED' or 'Answer: NOT_SUPPORTED'."

    def __init__(self, level: int = 1, seed: int = 0, n_train: int = 200, n_val: int = 50, n_test: int = 100):
        super().__init__(level=level, seed=seed, n_train=n_train, n_val=n_val, n_test=n_test)
        self.corpus = Corpus(seed)

    def tool_impls(self):
        return {"search": self.corpus.search}

    # ---------------------------------------------------------------- generation
    def make(self, rng: random.Random, index: int):
        # Alternate labels by position so every split is balanced.
        return self._claim(rng, LABELS[index % 2])

    def _claim(self, rng: random.Random, label: str):
        c = self.corpus
        by = c.by_name
        true = label == "SUPPORTED"

        def pick_other(options, actual):
            return rng.choice([o for o in options if o != actual])

        towns = [t.name for t in c.towns]
        rivers = [r.name for r in c.rivers]
        seas = sorted({r.facts["flows_into"] for r in c.rivers} | set(_SEAS))
        if self.level == 1:
            kind = rng.choice(["born", "job", "founder", "hq", "year", "river", "region", "flows"])
            if kind in ("born", "job"):
                p = rng.choice(c.people)
                if kind == "born":
                    town = p.facts["born_in"] if true else pick_other(towns, p.facts["born_in"])
                    return f"{p.name} was born in {town}.", label, self._meta([p.name], [p.describe()])
                job = p.facts["occupation"] if true else pick_other(_OCCUPATIONS, p.facts["occupation"])
                return f"{p.name} works as {_a(job)}.", label, self._meta([p.name], [p.describe()])
            if kind in ("founder", "hq", "year"):
                co = rng.choice(c.companies)
                if kind == "founder":
                    who = co.facts["founded_by"] if true else pick_other([x.name for x in c.people], co.facts["founded_by"])
                    return f"{co.name} was founded by {who}.", label, self._meta([co.name], [co.describe()])
                if kind == "hq":
                    town = co.facts["headquarters"] if true else pick_other(towns, co.facts["headquarters"])
                    return f"{co.name} is headquartered in {town}.", label, self._meta([co.name], [co.describe()])
                year = co.facts["founded_in"] if true else co.facts["founded_in"] + rng.choice([-7, -3, -1, 2, 5, 11])
                return f"{co.name} was founded in {year}.", label, self._meta([co.name], [co.describe()])
            if kind in ("river", "region"):
                t = rng.choice(c.towns)
                if kind == "river":
                    r = t.facts["river"] if true else pick_other(rivers, t.facts["river"])
                    return f"{t.name} lies on {r}.", label, self._meta([t.name], [t.describe()])
                reg = t.facts["region"] if true else pick_other(_REGIONS, t.facts["region"])
                return f"{t.name} is a town in {reg}.", label, self._meta([t.name], [t.describe()])
            r = rng.choice(c.rivers)
            sea = r.facts["flows_into"] if true else pick_other(seas, r.facts["flows_into"])
            return f"{r.name[0].upper() + r.name[1:]} flows into {sea}.", label, self._meta([r.name], [r.describe()])

        if self.level == 2:
            kind = rng.choice(["founder_born", "founder_job", "born_river", "hq_region", "town_sea", "hq_river"])
            if kind.startswith("founder"):
                co = rng.choice(c.companies)
                p = by[co.facts["founded_by"]]
                chain, ev = [co.name, p.name], [co.describe(), p.describe()]
                if kind == "founder_born":
                    town = p.facts["born_in"] if true else pick_other(towns, p.facts["born_in"])
                    return f"The founder of {co.name} was born in {town}.", label, self._meta(chain, ev)
                job = p.facts["occupation"] if true else pick_other(_OCCUPATIONS, p.facts["occupation"])
                return f"The founder of {co.name} works as {_a(job)}.", label, self._meta(chain, ev)
            if kind == "born_river":
                p = rng.choice(c.people)
                t = by[p.facts["born_in"]]
                r = t.facts["river"] if true else pick_other(rivers, t.facts["river"])
                return (f"{p.name} was born in a town that lies on {r}.", label,
                        self._meta([p.name, t.name], [p.describe(), t.describe()]))
            if kind in ("hq_region", "hq_river"):
                co = rng.choice(c.companies)
                t = by[co.facts["headquarters"]]
                chain, ev = [co.name, t.name], [co.describe(), t.describe()]
                if kind == "hq_region":
                    reg = t.facts["region"] if true else pick_other(_REGIONS, t.facts["region"])
                    return f"{co.name} is headquartered in a town in {reg}.", label, self._meta(chain, ev)
                r = t.facts["river"] if true else pick_other(rivers, t.facts["river"])
                return f"{co.name} is headquartered in a town on {r}.", label, self._meta(chain, ev)
            t = rng.choice(c.towns)
            r = by[t.facts["river"]]
            sea = r.facts["flows_into"] if true else pick_other(seas, r.facts["flows_into"])
            return (f"{t.name} lies on a river that flows into {sea}.", label,
                    self._meta([t.name, r.name], [t.describe(), r.describe()]))

        kind = rng.choice(["founder_town_river", "founder_town_region", "person_sea", "hq_sea"])
        if kind.startswith("founder"):
            co = rng.choice(c.companies)
            p = by[co.facts["founded_by"]]
            t = by[p.facts["born_in"]]
            chain, ev = [co.name, p.name, t.name], [co.describe(), p.describe(), t.describe()]
            if kind == "founder_town_river":
                r = t.facts["river"] if true else pick_other(rivers, t.facts["river"])
                return f"The founder of {co.name} was born in a town on {r}.", label, self._meta(chain, ev)
            reg = t.facts["region"] if true else pick_other(_REGIONS, t.facts["region"])
            return f"The founder of {co.name} was born in a town in {reg}.", label, self._meta(chain, ev)
        if kind == "person_sea":
            p = rng.choice(c.people)
            t = by[p.facts["born_in"]]
            r = by[t.facts["river"]]
            sea = r.facts["flows_into"] if true else pick_other(seas, r.facts["flows_into"])
            return (f"{p.name} was born in a town on a river that flows into {sea}.", label,
                    self._meta([p.name, t.name, r.name], [p.describe(), t.describe(), r.describe()]))
        co = rng.choice(c.companies)
        t = by[co.facts["headquarters"]]
        r = by[t.facts["river"]]
        sea = r.facts["flows_into"] if true else pick_other(seas, r.facts["flows_into"])
        return (f"{co.name} is headquartered in a town on a river that flows into {sea}.", label,
                self._meta([co.name, t.name, r.name], [co.describe(), t.describe(), r.describe()]))

    @staticmethod
    def _meta(chain: list[str], evidence: list[str]) -> dict:
        return {"chain": chain, "evidence": evidence, "hops": len(chain)}

    # ---------------------------------------------------------------- scoring
    def score(self, example, trajectory) -> Score:
        expected = str(example.answer)
        text = trajectory.final_text or ""
        note = length_note(trajectory)
        tool_note = self._tool_feedback(example, trajectory)
        raw = extract_answer(text)
        if raw is None:
            return Score(0.0, missing_answer_feedback(expected, text, self.answer_format) + tool_note + note)
        got = normalise_label(raw)
        if got is None:
            return Score(0.0, f"Parse failure: the answer must be SUPPORTED or NOT_SUPPORTED, got '{raw}'. "
                              f"Expected {expected}.{tool_note}{note}")
        if got == expected:
            return Score(1.0, f"Correct: {expected}.{tool_note}{note}")
        evidence = " ".join(example.meta.get("evidence", []))
        return Score(0.0, f"Wrong label: expected {expected}, but the answer was {got}. "
                          f"The corpus says: {evidence}{tool_note}{note}")

    def answer_key(self, trajectory) -> str | None:
        """SUPPORTED / NOT_SUPPORTED as the scorer reads it; None when neither parses."""
        return normalise_label(extract_answer(trajectory.final_text or ""))

    def _tool_feedback(self, example, trajectory) -> str:
        chain = list(example.meta.get("chain", []))
        calls = list(getattr(trajectory, "tool_calls", None) or [])
        searches = [c for c in calls if c.get("name") == "search" and not c.get("error")]
        errors = [c.get("error") for c in calls if c.get("error")]
        parts = []
        if not calls:
            parts.append(f"The search tool was not used; the claim needs these entities looked up: "
                         f"{', '.join(chain)}.")
        else:
            found: set[str] = set()
            off_chain = []
            for c in searches:
                q = str((c.get("arguments") or {}).get("query", ""))
                hits = {e.name for e in self.corpus.resolve(q)}
                found |= hits & set(chain)
                if not hits & set(chain):
                    off_chain.append(q)
            missing = [e for e in chain if e not in found]
            parts.append(f"The search tool was called {len(calls)} time(s).")
            if missing:
                parts.append(f"Not looked up but needed: {', '.join(missing)} (the claim's chain is "
                             f"{' -> '.join(chain)}).")
            else:
                parts.append(f"Every needed entity was looked up ({', '.join(chain)}).")
            if off_chain:
                parts.append(f"Searches that found nothing on the claim's chain: {', '.join(repr(q) for q in off_chain)}.")
            if errors:
                parts.append(f"Tool errors: {'; '.join(str(e) for e in errors[:3])}.")
        return " " + " ".join(parts)
