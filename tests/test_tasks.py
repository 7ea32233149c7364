"""Built-in tasks: deterministic disjoint splits, and scorers that grade and explain right, wrong and
malformed answers. Trajectories are built directly (no model needed)."""

from __future__ import annotations

import collections
import time

import pytest

from fst_lab.rollout import Trajectory
from fst_lab.tasks import SPLITS, Score, Task, get_task, task_names

BUILTIN_LEVELS = {"math": (1, 2, 3, 4), "codeio": (1, 2, 3, 4), "physics": (1, 2, 3, 4), "hover": (1, 2, 3)}


def traj(text: str, *, truncated: bool = False, tool_calls: list | None = None) -> Trajectory:
    return Trajectory(example_id="x", harness_id="h", sample=0, messages=[{"role": "user", "content": "q"}],
                      n_prompt_messages=1, final_text=text, truncated=truncated, tool_calls=tool_calls or [])


def small(name: str, level: int = 1, seed: int = 0):
    return get_task(name, level=level, seed=seed, n_train=30, n_val=10, n_test=10)


def test_registry_lists_builtins():
    assert {"math", "codeio", "physics", "hover", "jsonl"} <= set(task_names())
    with pytest.raises(ValueError, match="unknown task"):
        get_task("nope")
    with pytest.raises(ValueError, match="levels"):
        get_task("math", level=9)


@pytest.mark.parametrize("name,level", [(n, lv) for n, lvs in BUILTIN_LEVELS.items() for lv in lvs])
def test_splits_deterministic_disjoint_and_sized(name, level):
    a, b = small(name, level), small(name, level)
    assert isinstance(a, Task)
    ids, inputs = set(), set()
    for split in SPLITS:
        ea, eb = a.examples(split), b.examples(split)
        assert [e.to_json() for e in ea] == [e.to_json() for e in eb], "same seed -> same examples"
        assert len(ea) == a.sizes[split]
        assert a.examples(split, 3) == ea[:3]
        assert all(set(e.inputs) == {"question"} and e.inputs["question"] for e in ea)
        assert not ids & {e.id for e in ea} and not inputs & {e.inputs["question"] for e in ea}
        ids |= {e.id for e in ea}
        inputs |= {e.inputs["question"] for e in ea}
    assert len(ids) == len(inputs) == 50
    other = small(name, level, seed=1)
    assert [e.inputs for e in other.examples("val")] != [e.inputs for e in a.examples("val")]


def test_test_split_does_not_depend_on_train_size():
    a = get_task("math", level=2, seed=3, n_train=10, n_val=5, n_test=20)
    b = get_task("math", level=2, seed=3, n_train=100, n_val=5, n_test=20)
    assert a.examples("test") == b.examples("test")


def test_bad_split_and_too_many(caplog):
    t = small("math")
    with pytest.raises(ValueError, match="unknown split"):
        t.examples("dev")
    assert t.examples("val", 11) == t.examples("val")  # all there is, with a warning saying how to get more
    assert "n_val=11" in caplog.text


@pytest.mark.parametrize("kw,match", [({"n_val": -1}, "n_val must be a non-negative integer, got -1"),
                                      ({"n_train": True}, "n_train must be a non-negative integer, got True"),
                                      ({"n_val": 10**9}, "n_val must be at most 100,000, got 1,000,000,000")])
def test_split_sizes_out_of_range_are_refused_before_generating(kw, match):
    """Refused at construction, naming the size: a huge one used to generate (hover: for hours) before failing."""
    for name in ("math", "hover"):
        with pytest.raises(ValueError, match=match):
            get_task(name, level=1, seed=0, **kw)


def _check(score: Score, reward: float, *fragments: str):
    assert isinstance(score, Score) and score.reward == reward, score
    for frag in fragments:
        assert frag.lower() in score.feedback.lower(), (frag, score.feedback)


# ------------------------------------------------------------------------------------------- math
def test_math_scorer():
    t = small("math", level=2)
    ex = t.examples("val")[0]
    ans = ex.answer
    _check(t.score(ex, traj(f"Some steps.\nAnswer: {ans}")), 1.0, "correct")
    _check(t.score(ex, traj(f"So 3 + 4 = 7.\nAnswer: x = {ans - 1} + 1 = {ans}")), 1.0)
    _check(t.score(ex, traj(f"\\boxed{{{ans}}}")), 1.0)
    _check(t.score(ex, traj(f"Answer: {ans + 1}")), 0.0, "wrong value", f"expected {ans}", f"was {ans + 1}",
           "worked solution")
    _check(t.score(ex, traj(f"The answer is {ans}.")), 0.0, "parse failure", f"expected answer: {ans}", "answer:")
    _check(t.score(ex, traj("Answer: many")), 0.0, "parse failure", "no number")
    _check(t.score(ex, traj(""), ), 0.0, "parse failure", "empty response")
    _check(t.score(ex, traj("Let me think step by step and", truncated=True)), 0.0, "over length")


def test_math_level1_is_one_small_step():
    for ex in small("math", level=1).examples("train"):
        assert ex.meta["n_steps"] == 1 and 0 <= ex.answer <= 18


def test_math_and_physics_tools():
    tools = small("math").tool_impls()
    assert tools["calculator"]("(3 + 4) * 2") == "14"
    assert tools["calculator"]("sqrt(2*9.8*5)") == "9.89949"
    with pytest.raises(ValueError):
        tools["calculator"]("__import__('os')")
    assert tools["python"]("print(6 * 7)") == "42"
    assert "ZeroDivisionError" in tools["python"]("1/0")


# ------------------------------------------------------------------------------------------- codeio
def test_codeio_answers_are_real_execution_and_generation_is_fast():
    from fst_lab.sandbox import run_python

    t0 = time.time()
    task = get_task("codeio", level=3, seed=7, n_train=80, n_val=10, n_test=10)
    exs = task.examples("train")
    assert time.time() - t0 < 8.0, "generating ~100 programs must take only a few seconds"
    for ex in exs[:3]:
        r = run_python(ex.inputs["question"])
        assert r.ok and r.stdout.strip("\n") == ex.answer


def test_codeio_scorer():
    t = small("codeio", level=2)
    ex = next(e for e in t.examples("val") if " " not in e.answer)
    _check(t.score(ex, traj(f"Tracing...\nAnswer: {ex.answer}")), 1.0, "correct")
    _check(t.score(ex, traj(f"Answer: `{ex.answer}`")), 1.0)
    _check(t.score(ex, traj(f"Answer: {ex.answer}zz")), 0.0, "wrong output", repr(ex.answer))
    _check(t.score(ex, traj(f"It prints {ex.answer}")), 0.0, "parse failure")


def test_codeio_whitespace_and_lists():
    from fst_lab.tasks.base import Example

    t = small("codeio")
    ex = Example(id="c", inputs={"question": "print([1, 2, 3])"}, answer="[1, 2, 3]")
    _check(t.score(ex, traj("Answer:  [1,  2, 3] ")), 1.0)
    _check(t.score(ex, traj("Answer: [1, 2]")), 0.0, "wrong output")


# ------------------------------------------------------------------------------------------- physics
def test_physics_scorer_units_and_tolerance():
    from fst_lab.tasks.base import Example

    t = small("physics")
    ex = Example(id="p", inputs={"question": "A car ... how far, in m?"}, answer=36.0,
                 meta={"unit": "m", "formula": "d = a t^2 / 2"})
    _check(t.score(ex, traj("d = 36 m\nAnswer: 36 m")), 1.0, "correct")
    _check(t.score(ex, traj("Answer: 36.5 meters")), 1.0)  # within 2%, unit spelled out
    _check(t.score(ex, traj("Answer: d = 2 x 3^2 x 2 = 36 m")), 1.0)
    _check(t.score(ex, traj("Answer: 36")), 1.0, "state the unit")
    _check(t.score(ex, traj("Answer: 36 km")), 0.0, "wrong unit", "km", "m")
    _check(t.score(ex, traj("Answer: 40 m")), 0.0, "wrong value", "36 m", "d = a t^2 / 2")
    _check(t.score(ex, traj("Answer: far")), 0.0, "parse failure")
    _check(t.score(ex, traj("It goes 36 m.", truncated=True)), 0.0, "parse failure", "over length")
    ex2 = Example(id="p2", inputs={"question": "..."}, answer=6.0, meta={"unit": "m/s^2", "formula": "a"})
    _check(t.score(ex2, traj("Answer: 6 m/s²")), 1.0)
    _check(t.score(ex2, traj("Answer: 6 m/s")), 0.0, "wrong unit")


def test_physics_generated_answers_score_themselves():
    for level in (1, 2, 3, 4):
        t = small("physics", level)
        for ex in t.examples("val")[:5]:
            assert ex.meta["unit"] in ex.inputs["question"]
            assert t.score(ex, traj(f"Answer: {ex.answer:.4g} {ex.meta['unit']}")).reward == 1.0


# ------------------------------------------------------------------------------------------- hover
def test_hover_labels_balanced_and_chains_match_level():
    for level in (1, 2, 3):
        t = get_task("hover", level=level, seed=0, n_train=40, n_val=20, n_test=20)
        for split in SPLITS:
            c = collections.Counter(e.answer for e in t.examples(split))
            assert c["SUPPORTED"] == c["NOT_SUPPORTED"]
        assert all(e.meta["hops"] == level for e in t.examples("train"))


def test_hover_search_tool_is_fuzzy():
    t = small("hover")
    search = t.tool_impls()["search"]
    ex = t.examples("val")[0]
    name = ex.meta["chain"][0]
    exact = search(name)
    assert exact.startswith(name) and exact == ex.meta["evidence"][0]
    assert search(name.upper()) == exact and search(f"  {name.lower()} ") == exact
    assert name in search(name[: len(name) - 2])  # substring
    assert name in search(ex.inputs["question"])  # the whole claim finds the entity in it
    assert search("Zzyzx Qwerty") == "No results for 'Zzyzx Qwerty'."


def test_hover_level1_fact_is_in_the_named_entity_result():
    t = small("hover", 1)
    search = t.tool_impls()["search"]
    for ex in t.examples("val"):
        assert ex.meta["chain"][0] in ex.inputs["question"] or ex.meta["chain"][0].lower() in ex.inputs["question"].lower()
        assert search(ex.meta["chain"][0]) == ex.meta["evidence"][0]


def test_hover_scorer_and_tool_feedback():
    t = small("hover", level=2)
    ex = t.examples("val")[0]
    chain = ex.meta["chain"]
    wrong = "NOT_SUPPORTED" if ex.answer == "SUPPORTED" else "SUPPORTED"
    search = t.tool_impls()["search"]
    good_calls = [{"name": "search", "arguments": {"query": q}, "observation": search(q), "error": None}
                  for q in chain]
    _check(t.score(ex, traj(f"Answer: {ex.answer}", tool_calls=good_calls)), 1.0, "correct",
           "every needed entity was looked up")
    _check(t.score(ex, traj(f"Answer: {ex.answer.lower().replace('_', ' ')}")), 1.0, "not used")
    s = t.score(ex, traj(f"Answer: {wrong}", tool_calls=good_calls[:1]))
    _check(s, 0.0, "wrong label", f"expected {ex.answer}", "not looked up but needed", chain[1])
    off = [{"name": "search", "arguments": {"query": "Zzyzx Qwerty"}, "observation": "No results", "error": None},
           {"name": None, "arguments": None, "observation": "ERROR: bad", "error": "could not parse tool call"}]
    _check(t.score(ex, traj(f"Answer: {ex.answer}", tool_calls=off)), 1.0, "found nothing on the claim's chain",
           "zzyzx", "tool errors", "could not parse")
    _check(t.score(ex, traj("Answer: maybe")), 0.0, "parse failure", "supported or not_supported")
    _check(t.score(ex, traj("I think it is supported")), 0.0, "parse failure", "search tool was not used",
           chain[0])


def test_hover_negative_claims_are_false_in_corpus():
    t = get_task("hover", level=1, seed=0, n_train=60, n_val=10, n_test=10)
    for ex in t.examples("train"):
        evidence = ex.meta["evidence"][0]
        claim = ex.inputs["question"].rstrip(".")
        # the claimed value (last words of the claim) appears in the evidence iff the claim is supported
        for prefix in (" was born in ", " was founded by ", " is headquartered in ", " lies on ", " is a town in ",
                       " flows into ", " was founded in ", " works as "):
            if prefix in claim:
                value = claim.split(prefix, 1)[1]
                assert (value in evidence) == (ex.answer == "SUPPORTED"), (claim, evidence)


def test_answer_stats_show_when_a_reward_is_what_a_constant_answer_earns():
    """HoVer's labels are balanced, so answering SUPPORTED to everything scores exactly 0.5: the evaluation's
    answer statistics must say so (an RL run that collapses to one label looks like a 0.5 'skill')."""
    from fst_lab import records
    from fst_lab.evaluation import ANSWER_KEYS, answer_stats
    from fst_lab.tasks.base import answer_key

    assert set(ANSWER_KEYS) <= set(records.KEYS[records.EVAL])  # the record schema names what evaluations add

    t = small("hover")
    exs = t.examples("val")

    def trajs(texts):
        return [Trajectory(example_id=e.id, harness_id="h", sample=0, messages=[], n_prompt_messages=0,
                           final_text=x) for e, x in zip(exs, texts)]

    const = trajs(["Answer: supported"] * len(exs))
    st = answer_stats(t, exs, const)
    assert st == {"answer_top": "SUPPORTED", "answer_top_share": 1.0, "answer_unparsed": 0.0, "constant_floor": 0.5}
    assert sum(t.score(e, x).reward for e, x in zip(exs, const)) / len(exs) == st["constant_floor"]
    right = trajs([f"Answer: {e.answer.lower().replace('_', ' ')}" for e in exs[:-1]] + ["Answer: maybe"])
    st = answer_stats(t, exs, right)
    assert st["answer_top_share"] == 0.5 and st["answer_unparsed"] == pytest.approx(0.1)
    # Only each example's first sample counts; a sample of another example is not mistaken for it.
    extra = Trajectory(example_id=exs[0].id, harness_id="h", sample=1, messages=[], n_prompt_messages=0,
                       final_text="Answer: NOT_SUPPORTED")
    assert answer_stats(t, exs, const + [extra])["answer_top_share"] == 1.0
    assert answer_stats(t, [], []) == {}
    # Math reads the number the scorer reads; a task without its own key falls back to the Answer line.
    m = small("math")
    assert answer_key(m, traj("so 3 + 4 = 7.0\nAnswer: 3 + 4 = 7.0")) == answer_key(m, traj("Answer: 7")) == "7"
    assert answer_key(m, traj("Answer: none")) is None
    c = small("codeio")
    assert not hasattr(c, "answer_key")
    assert answer_key(c, traj("Answer:   Foo   BAR ")) == "foo bar"
