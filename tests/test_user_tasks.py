"""User tasks from JSONL files and datasets: splits, scorers, and errors that name file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fst_lab.rollout import Trajectory, score_trajectory
from fst_lab.tasks import SPLITS, DatasetTask, JsonlTask, Task, get_task
from fst_lab.tasks.user import TaskDataError

REPO = Path(__file__).resolve().parent.parent


def traj(text: str) -> Trajectory:
    return Trajectory(example_id="x", harness_id="h", sample=0, messages=[{"role": "user", "content": "q"}],
                      n_prompt_messages=1, final_text=text)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_sample_file_via_registry():
    task = get_task("jsonl", path=REPO / "examples" / "my_task.jsonl", scorer="exact")
    assert isinstance(task, Task) and task.name == "my_task"
    sizes = {s: len(task.examples(s)) for s in SPLITS}
    assert sum(sizes.values()) == 20 and all(sizes.values()), sizes
    ex = next(e for s in SPLITS for e in task.examples(s) if e.id == "cap-1")
    assert ex.inputs == {"question": "What is the capital of France?"} and ex.answer == "Paris"
    assert ex.meta["where"].endswith("my_task.jsonl:1")
    # the session passes level and seed to every task; a file has no levels
    same = get_task("jsonl", level=1, seed=0, path=str(REPO / "examples" / "my_task.jsonl"))
    assert same.examples("val") == task.examples("val")


def test_hash_split_is_deterministic_disjoint_and_seeded(tmp_path):
    rows = [{"question": f"q{i}", "answer": str(i)} for i in range(50)] + [{"question": "q7", "answer": "7"}]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    a, b = JsonlTask.from_jsonl(p), JsonlTask.from_jsonl(p)
    assert all(a.examples(s) == b.examples(s) for s in SPLITS)
    homes = {}
    for s in SPLITS:
        for ex in a.examples(s):
            assert homes.setdefault(ex.inputs["question"], s) == s, "identical inputs share one split"
    assert [len({e.inputs["question"] for e in a.examples(s)}) for s in SPLITS] == [40, 5, 5]  # 80/10/10
    assert sum(len(a.examples(s)) for s in SPLITS) == 51
    c = JsonlTask.from_jsonl(p, seed=1)
    assert [e.id for e in c.examples("val")] != [e.id for e in a.examples("val")]
    assert a.examples("train")[0].id == "d-1"  # no id field: file stem + line number


def test_split_field_and_cross_split_duplicates(tmp_path, caplog):
    rows = [{"id": "a", "question": "1+1?", "answer": "2", "split": "train"},
            {"id": "b", "question": "2+2?", "answer": "4", "split": "validation"},
            {"id": "c", "question": "3+3?", "answer": "6", "split": "test"},
            {"id": "d", "question": "3+3?", "answer": "6", "split": "train"}]
    task = JsonlTask.from_jsonl(write_jsonl(tmp_path / "s.jsonl", rows))
    assert [e.id for e in task.examples("train")] == ["a"]
    assert [e.id for e in task.examples("val")] == ["b"] and [e.id for e in task.examples("test")] == ["c"]
    assert "dropped" in caplog.text


@pytest.mark.parametrize("rows,match", [
    (['{"question": "a", "answer": "b"}', '{"question": "c", "answer": }'], r"bad\.jsonl:2: invalid JSON"),
    (['{"question": "a", "answer": "b"}', '["not", "an", "object"]'], r"bad\.jsonl:2: each line must be a JSON object"),
    (['{"answer": "b"}'], r"bad\.jsonl:1: missing input field\(s\) \['question'\]"),
    (['{"question": "a"}'], r"bad\.jsonl:1: missing answer field 'answer'"),
    (['{"id": 1, "question": "a", "answer": "b"}', '', '{"id": 1, "question": "c", "answer": "d"}'],
     r"bad\.jsonl:3: duplicate id '1' \(first seen at .*bad\.jsonl:1\)"),
    (['{"question": "a", "answer": "b", "split": "holdout"}'], r"bad\.jsonl:1: unknown split 'holdout'"),
    (['{"question": "a", "answer": "b", "split": "train"}', '{"question": "c", "answer": "d"}'],
     r"bad\.jsonl:2: no 'split' field"),
    ([], r"bad\.jsonl: no examples"),
])
def test_malformed_files_name_file_and_line(tmp_path, rows, match):
    p = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(TaskDataError, match=match):
        JsonlTask.from_jsonl(p)



def test_byte_order_mark_is_read_as_the_same_file(tmp_path):
    """A file saved with a UTF-8 byte-order mark (Windows editors, spreadsheet exports) reads as without one."""
    rows = [{"id": "a", "question": "1+1?", "answer": "2"}, {"id": "b", "question": "2+2?", "answer": "4"}]
    plain = write_jsonl(tmp_path / "plain.jsonl", rows)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    a, b = JsonlTask.from_jsonl(plain), JsonlTask.from_jsonl(bom)
    assert [(e.id, e.inputs, e.answer) for s in SPLITS for e in a.examples(s)] == \
        [(e.id, e.inputs, e.answer) for s in SPLITS for e in b.examples(s)]


def test_a_task_without_its_own_harness_starts_from_generic(tmp_path):
    """A jsonl (or user-registered) task has no harness file of its name: the seed harness is the task-agnostic
    ``generic`` one, in the plan and in the run; a harness stated in the config still wins."""
    from fst_lab.config import FSTConfig
    from fst_lab.plan import describe_plan
    from fst_lab.schedule import stage_harness, stage_harness_name

    cfg = FSTConfig(task="jsonl", task_kwargs={"path": str(REPO / "examples" / "my_task.jsonl")})
    assert stage_harness_name(cfg, 0) == "generic" and stage_harness(cfg, 0).name == "generic"
    assert "seed harness generic" in describe_plan(cfg)
    assert stage_harness_name(FSTConfig(task="math"), 0) == "math"
    stated = FSTConfig(task="jsonl", harness="math", task_kwargs=cfg.task_kwargs)
    assert stage_harness_name(stated, 0) == "math" and "seed harness math" in describe_plan(stated)

def test_missing_file():
    with pytest.raises(TaskDataError, match="nope.jsonl: file not found"):
        JsonlTask.from_jsonl("nope.jsonl")


def test_exact_scorer(tmp_path):
    task = JsonlTask.from_jsonl(REPO / "examples" / "my_task.jsonl", ratios=(1, 0, 0))
    by_id = {e.id: e for e in task.examples("train")}
    assert task.score(by_id["cap-1"], traj("Answer: paris.")).reward == 1.0
    assert task.score(by_id["cap-1"], traj('The capital.\nAnswer: "Paris"')).reward == 1.0
    assert task.score(by_id["cap-1"], traj("Paris")).reward == 1.0  # one-line reply taken whole
    s = task.score(by_id["cap-1"], traj("Answer: Lyon"))
    assert s.reward == 0.0 and "expected 'Paris'" in s.feedback and "'Lyon'" in s.feedback
    s = task.score(by_id["cap-1"], traj("I think...\nit is Paris maybe"))
    assert s.reward == 0.0 and "parse failure" in s.feedback.lower()
    assert task.score(by_id["cap-17"], traj("Answer: Washington DC")).reward == 1.0  # list = any of


def test_numeric_scorer(tmp_path):
    rows = [{"question": "pi?", "answer": 3.14159, "split": "train"}]
    task = JsonlTask.from_jsonl(write_jsonl(tmp_path / "n.jsonl", rows), scorer="numeric", tolerance=0.01)
    ex = task.examples("train")[0]
    assert task.score(ex, traj("Answer: 3.14")).reward == 1.0
    assert task.score(ex, traj("Answer: 22/7 = 3.142857")).reward == 1.0
    s = task.score(ex, traj("Answer: 3.2"))
    assert s.reward == 0.0 and "expected 3.14159" in s.feedback and "3.2" in s.feedback
    assert "no number" in task.score(ex, traj("Answer: pi")).feedback
    rel = JsonlTask.from_jsonl(tmp_path / "n.jsonl", scorer="numeric", tolerance=0, rel_tolerance=0.05)
    assert rel.score(ex, traj("Answer: 3.0")).reward == 1.0


def test_callable_scorer_gets_only_what_it_names():
    seen = {}

    def contains(prediction, answer):
        seen["args"] = (prediction, answer)
        ok = prediction is not None and str(answer).lower() in prediction.lower()
        return float(ok), ("mentions it" if ok else f"should mention {answer}")

    task = JsonlTask.from_jsonl(REPO / "examples" / "my_task.jsonl", scorer=contains, ratios=(1, 0, 0))
    ex = next(e for e in task.examples("train") if e.id == "cap-2")
    assert tuple(task.score(ex, traj("Answer: it is Tokyo, Japan"))) == (1.0, "mentions it")
    assert seen["args"] == ("it is Tokyo, Japan", "Tokyo")
    assert tuple(task.score(ex, traj("Answer: Kyoto"))) == (0.0, "should mention Tokyo")

    def by_text(text, **kwargs):  # **kwargs receives everything else
        assert {"prediction", "answer", "example", "trajectory"} <= set(kwargs)
        return len(text) < 20

    t2 = JsonlTask.from_jsonl(REPO / "examples" / "my_task.jsonl", scorer=by_text, ratios=(1, 0, 0))
    s = t2.score(ex, traj("Answer: Tokyo"))
    assert s.reward == 1.0 and "Expected 'Tokyo'" in s.feedback


def test_raising_scorer_is_caught_by_rollout_scoring():
    def broken(prediction):
        raise RuntimeError("scorer bug")

    task = JsonlTask.from_jsonl(REPO / "examples" / "my_task.jsonl", scorer=broken, ratios=(1, 0, 0))
    t = score_trajectory(task, task.examples("train")[0], traj("Answer: x"))
    assert t.reward == 0.0 and "scorer bug" in t.feedback and "scorer bug" in t.error


def test_bad_scorer_arguments():
    with pytest.raises(ValueError, match="scorer must be"):
        JsonlTask.from_jsonl(REPO / "examples" / "my_task.jsonl", scorer="fuzzy")


def test_dataset_and_dataset_dict():
    from datasets import Dataset, DatasetDict

    rows = [{"question": f"What is {i} + {i}?", "answer": 2 * i} for i in range(30)]
    task = DatasetTask.from_dataset(Dataset.from_list(rows), scorer="numeric", name="doubles")
    assert sum(len(task.examples(s)) for s in SPLITS) == 30
    ex = task.examples("test")[0]
    assert task.score(ex, traj(f"Answer: {ex.answer}")).reward == 1.0
    assert ex.id.startswith("doubles-")

    dd = DatasetDict(train=Dataset.from_list(rows[:20]), validation=Dataset.from_list(rows[20:25]),
                     test=Dataset.from_list(rows[25:]))
    task = DatasetTask.from_dataset(dd, scorer="numeric")
    assert [len(task.examples(s)) for s in SPLITS] == [20, 5, 5]
    assert task.examples("val")[0].inputs["question"] == "What is 20 + 20?"
    with pytest.raises(TaskDataError, match=r"dataset row 0: missing input field"):
        DatasetTask.from_dataset(Dataset.from_list([{"q": "x", "answer": "y"}]))


def test_tools_and_extra_inputs(tmp_path):
    rows = [{"id": "1", "context": {"k": 1}, "question": "k?", "answer": "1", "difficulty": "easy", "split": "val"}]
    task = JsonlTask.from_jsonl(write_jsonl(tmp_path / "t.jsonl", rows), input_fields=["context", "question"],
                                tools={"echo": lambda text: text})
    ex = task.examples("val")[0]
    assert ex.inputs == {"context": '{"k": 1}', "question": "k?"} and ex.meta["difficulty"] == "easy"
    assert task.tool_impls()["echo"]("hi") == "hi"
