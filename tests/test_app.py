"""The Gradio app (app.py), launched on 127.0.0.1 and driven through gradio_client by api_name.

A module fixture builds a small *real* run directory with a tiny random policy (one RL step through
TRL, an evaluation, a population snapshot, then a hand edit), so every view has real data: a
checkpoint with a safetensors LoRA adapter, slow/eval metrics, a seed and a manual lineage node.
The Run tab test then starts its own tiny session from the app and steps it fast and slow.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest
import yaml

from fst_lab.harness import Harness

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # app.py lives at the top level

pytestmark = pytest.mark.slow

EXPECTED_ENDPOINTS = {
    "/list_runs", "/select_run", "/select_cycle", "/examples", "/pick_harness_a", "/pick_harness_b", "/arena",
    "/arena_submit", "/diff", "/lineage", "/curves", "/initial_view", "/session_start", "/session_fast",
    "/session_slow", "/session_run", "/session_pause", "/session_resume", "/session_stop", "/session_components",
    "/session_component", "/session_edit", "/session_poll",
}

# The Run tab's config in these tests: the app's tiny config, made tinier (8 new tokens, 3 GEPA calls).
RUN_TAB_CONFIG = """\
mode: fst
task: math
cycles: 1
steps_per_cycle: 1
population_size: 2
num_generations: 2
prompts_per_step: 1
fast_train_size: 2
fast_val_size: 1
eval_size: 2
eval_every_cycle: false
max_new_tokens: 8
fast: {max_metric_calls: 3, max_new_tokens: 8, reflection_max_tokens: 8, reflection_minibatch_size: 1,
       reflection_retries: 0}
slow: {learning_rate: 0.001}
run_name: from-the-app
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def text_of(message: dict) -> str:
    """A chat message's text (Gradio 6 returns content as a list of typed parts)."""
    c = message.get("content")
    if isinstance(c, list):
        return "".join(p.get("text", "") for p in c if isinstance(p, dict))
    return str(c or "")


def value_of(update):
    return update["value"] if isinstance(update, dict) and "value" in update else update


def choice_values(update) -> list:
    return [c[1] if isinstance(c, (list, tuple)) else c for c in update["choices"]]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """A real tiny run: one RL step (LoRA adapter checkpoint), an eval, a snapshot, then a hand edit."""
    from fst_lab.config import FSTConfig
    from fst_lab.models import tiny_policy
    from fst_lab.session import Session

    root = tmp_path_factory.mktemp("runs")
    cfg = FSTConfig(mode="fst", task="hover", level=1, cycles=1, steps_per_cycle=1, schedule="w",
                    population_size=2, num_generations=2, prompts_per_step=1, eval_size=2, max_new_tokens=8,
                    slow={"learning_rate": 1e-3}, runs_root=str(root), run_name="tiny", seed=0, save_rollouts=2)
    s = Session(cfg, policy=tiny_policy(seed=0), progress=False)
    s.run()  # w -> evaluate -> populations/cycle_0001.yaml
    s.edit_harness(0, {"system_prompt": "Search every entity first.\nEnd with 'Answer: SUPPORTED' or "
                                        "'Answer: NOT_SUPPORTED'.\n"}, note="hand edit in the fixture")
    s.close()
    # A second run whose config carries a (fake) key: the app must never show it.
    leaky = root / "leaky"
    import shutil

    shutil.copytree(s.run_dir, leaky)
    cfg_d = yaml.safe_load((leaky / "config.yaml").read_text())
    cfg_d["fast"] = {"reflection_lm": "openai/gpt-4.1-mini", "api_key": "sk-live-THISMUSTNOTLEAK123"}
    (leaky / "config.yaml").write_text(yaml.safe_dump(cfg_d))
    return root


@pytest.fixture(scope="module")
def app(runs_root):
    from gradio_client import Client

    import app as app_module
    from fst_lab.models import tiny_policy

    # Every call builds a fresh tiny policy with the same seed: the base weights the run started from.
    demo = app_module.build_app(runs_root, policy_factory=lambda name: tiny_policy(seed=0))
    port = free_port()
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield demo, client
    steering = demo.fst["steering"]
    if steering.session is not None:
        steering.stop()
    demo.close()


@pytest.fixture(scope="module")
def client(app):
    return app[1]


@pytest.fixture(scope="module")
def tiny_view(runs_root):
    from fst_lab.runs import load_run

    run = load_run(runs_root / "tiny")
    seed = run.seed_harness()
    edited = [h for h in run.population() if h.lineage.origin == "manual"][0]
    return run, seed, edited


# ---------------------------------------------------------------------------- the API surface
def test_every_event_has_an_api_name(app):
    demo, client = app
    named = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert EXPECTED_ENDPOINTS <= named
    unnamed = [fn for fn in demo.fns.values() if not getattr(fn, "api_name", None)]
    assert not unnamed, f"events without api_name: {[getattr(f, 'name', f) for f in unnamed]}"


def test_binds_loopback_only(app):
    demo, _ = app
    assert demo.server_name == "127.0.0.1"
    import app as app_module

    assert app_module.HOST == "127.0.0.1"


# ---------------------------------------------------------------------------- explorer
def test_pick_run_cycle_and_harnesses(client, tiny_view):
    run, seed, edited = tiny_view
    runs = client.predict(api_name="/list_runs")
    assert {"tiny", "leaky"} <= set(choice_values(runs))

    out = client.predict("tiny", api_name="/select_run")
    status, cycles, ha, hb, task, examples, config, diff_code, diff_view, lineage, p1, p2, weights, tokens = out
    assert "tiny" in status and "step_000001" in status  # the checkpoint is listed
    # the arena opens on the weights the run's harnesses evolved with, and the run's new tokens per turn
    assert value_of(weights) == "trained" and value_of(tokens) == 8
    assert choice_values(cycles) == ["latest", "1"]
    assert value_of(ha) == f"run:{seed.id}"  # default: seed vs best evolved
    assert value_of(hb) == f"run:{edited.id}"
    assert value_of(task) == "hover"
    assert any(v.startswith("hover-L1-s0-val-") for v in choice_values(examples))
    assert "mode: fst" in config
    assert "Search every entity first." in diff_code
    assert "manual" in lineage and p1 and p2

    # cycle 1 was snapshotted before the hand edit: its population is the seed alone
    ha1, hb1, status1, lineage1, diff1, diff_view1 = client.predict("tiny", "1", api_name="/select_cycle")
    assert value_of(ha1) == value_of(hb1) == f"run:{seed.id}"
    assert "identical" in diff1 and f"B: {seed.name}@{seed.id}" in diff_view1  # the diff follows the cycle
    in_pop = [c for c in ha1["choices"] if c[0].startswith("● ")]
    assert [c[1] for c in in_pop] == [f"run:{seed.id}"]
    assert "cycle **1**" in status1

    ex = client.predict("tiny", "math", api_name="/examples")
    assert any(v.startswith("math-") for v in choice_values(ex))

    d1 = client.predict("tiny", f"run:{seed.id}", f"run:{edited.id}", api_name="/pick_harness_a")
    d2 = client.predict("tiny", f"run:{seed.id}", "file:math", api_name="/pick_harness_b")
    assert "+  Search every entity first." in d1[0]
    assert "name: math" in d2[0]

    init = client.predict("", api_name="/initial_view")
    assert "No run selected" in init[0] and value_of(init[-2]) == "base"
    a_file = value_of(init[2]).removeprefix("file:")  # no run: harness A's own loop.max_new_tokens
    a_harness = Harness.load(REPO / "harnesses" / f"{a_file}.yaml")
    assert value_of(init[-1]) == a_harness.loop.max_new_tokens


def test_arena_answers_an_example_on_both_sides(client, tiny_view):
    run, seed, edited = tiny_view
    t0 = time.time()
    chat_a, chat_b, score_a, score_b, notice = client.predict(
        "tiny", "latest", f"run:{seed.id}", f"run:{edited.id}", "base", "hover", "hover-L1-s0-val-0000", "",
        8, 0.0, api_name="/arena")
    for chat, h in ((chat_a, seed), (chat_b, edited)):
        assert chat[0]["metadata"]["title"].startswith(f"🧩 {h.name}@{h.id}")  # which harness ran
        users = [m for m in chat if m["role"] == "user"]
        assert users and "Claim:" in text_of(users[-1])
        assert chat[-1]["role"] == "assistant"  # the answer (a tiny random model's, but an answer)
    assert "Search every entity first." in text_of(chat_b[0]) and "Search every entity" not in text_of(chat_a[0])
    for score in (score_a, score_b):
        assert "score 0.00" in score or "score 1.00" in score
        assert "feedback:" in score and len(score.split("feedback:")[1].strip()) > 20  # the task's own words
    assert "weights: base" in notice
    assert time.time() - t0 < 60

    # Enter in the free-text box: same function, unscored
    _, _, sa, sb, _ = client.predict("tiny", "latest", f"run:{seed.id}", "file:hover", "base", "hover", "",
                                     "Cepark Press was founded by Peiqueith Vaetu.", 8, 0.0,
                                     api_name="/arena_submit")
    assert "not scored" in sa and "not scored" in sb


def test_arena_trained_weights_load_the_runs_adapter(client, tiny_view):
    run, seed, edited = tiny_view
    *_, score_a, score_b, notice = client.predict(
        "tiny", "latest", f"run:{seed.id}", f"run:{edited.id}", "trained", "hover", "hover-L1-s0-val-0001", "",
        8, 0.0, api_name="/arena")
    assert "weights: trained" in notice and "checkpoints/step_000001" in notice
    assert "score" in score_a and "score" in score_b


def test_no_run_still_demos_with_harness_files(client):
    out = client.predict("", api_name="/select_run")
    status, cycles, ha, hb = out[:4]
    assert "No run selected" in status
    assert all(v.startswith("file:") for v in choice_values(ha))
    chat_a, chat_b, score_a, score_b, notice = client.predict(
        "", "latest", "file:hover", "file:generic", "trained", "hover", "hover-L1-s0-val-0002", "", 8, 0.0,
        api_name="/arena")
    assert chat_a and chat_b and "score" in score_a and "score" in score_b
    assert "no run selected" in notice  # trained weights asked without a run: a notice, base weights


def test_diff_lineage_curves(client, tiny_view):
    run, seed, edited = tiny_view
    code, view = client.predict("tiny", f"run:{seed.id}", f"run:{edited.id}", api_name="/diff")
    assert code.startswith(f"--- {seed.name}@{seed.id}")
    assert f"-  {seed.system_prompt.splitlines()[0]}" in code and "+  Search every entity first." in code
    assert "background:#e6ffed" in view  # additions shown green

    same, _ = client.predict("tiny", f"run:{seed.id}", f"run:{seed.id}", api_name="/diff")
    assert "identical" in same

    tree = client.predict("tiny", "latest", api_name="/lineage")
    lines = tree.splitlines()
    seed_line = next(ln for ln in lines if seed.id in ln)
    edit_line = next(ln for ln in lines if edited.id in ln)
    assert "🌱 seed" in seed_line and "✍️ manual" in edit_line and "└── " in edit_line
    assert "hand edit in the fixture" in edit_line
    assert "not evaluated" in edit_line and "★ best" not in edit_line  # unscored: not the best

    p1, p2 = client.predict("tiny", api_name="/curves")
    for p in (p1, p2):
        assert p and p.get("type") == "matplotlib" and p.get("plot", "").startswith("data:image")


# ---------------------------------------------------------------------------- safety
@pytest.mark.parametrize("bad", ["../../etc", "/etc", "tiny/../../.."])
def test_paths_outside_the_runs_root_are_refused(client, bad):
    status = client.predict(bad, api_name="/select_run")[0]
    assert "refused" in status and "outside the runs root" in status
    notice = client.predict(bad, "latest", "file:hover", "file:hover", "base", "hover", "", "hi", 8, 0.0,
                            api_name="/arena")[-1]
    assert "refused" in notice
    assert "refused" in client.predict(bad, "latest", api_name="/lineage")
    assert "refused" in client.predict(bad, "file:hover", "file:math", api_name="/diff")[0]


def test_harness_refs_cannot_escape_either(client):
    code, _ = client.predict("tiny", "run:../../../etc/passwd", "file:hover", api_name="/diff")
    assert "refused" in code
    code, _ = client.predict("", "file:../../etc/passwd", "file:hover", api_name="/diff")
    assert "no harness file named" in code


def test_secrets_are_redacted_and_never_stored(client):
    out = client.predict("leaky", api_name="/select_run")
    config = out[6]
    assert "THISMUSTNOTLEAK" not in str(out)
    assert "api_key: '***redacted***'" in config or "api_key: ***redacted***" in config
    leaky_config = RUN_TAB_CONFIG.replace("slow: {learning_rate: 0.001}",
                                          "slow: {learning_rate: 0.001, api_key: sk-live-abcdefghijkl}")
    msg = client.predict(leaky_config, api_name="/session_start")[0]
    assert "refused" in msg and "abcdefghijkl" not in msg


# ---------------------------------------------------------------------------- unit: chat rendering
def test_tool_calls_render_as_collapsible_messages():
    from fst_lab import appkit
    from fst_lab.harness import load_named

    h = load_named("hover")
    msgs, _ = h.render({"question": "Cepark Press was founded by Peiqueith Vaetu."})
    n = len(msgs)
    msgs += [
        {"role": "assistant", "content": '<tool_call>{"name": "search", "arguments": {"query": "Cepark Press"}}'
                                         "</tool_call>",
         "tool_calls": [{"id": "call_0", "type": "function",
                         "function": {"name": "search", "arguments": {"query": "Cepark Press"}}}]},
        {"role": "tool", "name": "search", "tool_call_id": "call_0", "content": "Cepark Press: a company."},
        {"role": "assistant", "content": "<b>bold?</b>\nAnswer: SUPPORTED"},
        {"role": "tool", "name": "error", "tool_call_id": "", "content": "ERROR: could not parse tool call"},
    ]
    chat = appkit.chat_messages(msgs, n, h)
    titles = [(m.get("metadata") or {}).get("title", "") for m in chat]
    assert titles[0].startswith("🧩 hover@")
    assert 'search(query="Cepark Press")' in titles[2] and titles[2].startswith("🔧")
    assert chat[2]["content"] == "Cepark Press: a company."
    assert chat[3]["content"].startswith("&lt;b&gt;")  # model text is text, never markup
    assert titles[4] == "⚠️ malformed tool call"
    assert [m["role"] for m in chat] == ["assistant", "user", "assistant", "assistant", "assistant"]


# ---------------------------------------------------------------------------- the Run tab
def test_run_tab_steers_a_tiny_session(client, runs_root):
    msg, status, target, comp, comp_text, lineage, log, progress, run_pick, *_ = client.predict(
        RUN_TAB_CONFIG, api_name="/session_start")
    assert value_of(run_pick) == "from-the-app"  # the run picker follows the live run
    assert msg.startswith("✅ session started") and "from-the-app" in msg, msg
    assert status["run_dir"] == "from-the-app" and status["rl_step"] == 0
    assert (runs_root / "from-the-app" / "config.yaml").exists()  # forced inside the runs root
    seed_id = value_of(target)
    assert value_of(comp) == "system_prompt" and "Answer:" in comp_text

    msg, status, *_ = client.predict(api_name="/session_fast")
    assert msg.startswith("✅ fast step"), msg
    assert status["fast_round"] == 1

    msg, status, target, lineage, log, progress, *buttons = client.predict(1, api_name="/session_slow")
    assert "idle" in progress  # the progress line is back to idle once the step is done
    assert msg.startswith("✅ 1 slow step"), msg
    assert status["rl_step"] == 1 and '"kind": "slow"' in log

    target_id = value_of(target)
    comps, text = client.predict(target_id, api_name="/session_components")
    assert "task_template" in choice_values(comps)
    tmpl = client.predict(target_id, "task_template", api_name="/session_component")
    assert "{question}" in tmpl
    msg, status, target, lineage, log = client.predict(
        target_id, "system_prompt", "Work step by step.\nEnd with 'Answer: <number>'.", "from the test",
        api_name="/session_edit")
    assert msg.startswith("✍️ manual edit recorded"), msg
    assert "✍️ manual" in lineage and "from the test" in lineage
    assert target_id not in status["population"]  # replaced by its edited child, from the next step on
    assert all(h in lineage for h in status["population"])

    # the same edit, read back from the run directory by the explorer (pure loaders)
    tree = client.predict("from-the-app", "latest", api_name="/lineage")
    assert "✍️ manual" in tree and "from the test" in tree
    assert seed_id in tree

    st, lin, log, *_, summary = client.predict("from-the-app", api_name="/session_poll")
    assert st["rl_step"] == 1 and "✍️ manual" in lin

    # a bad edit is refused with the reason, nothing changes
    msg, status, *_ = client.predict(target_id, "task_template", "no placeholder here", "", api_name="/session_edit")
    assert "refused" in msg

    # background run: paused before it starts, then stopped -> no step is taken
    assert "paused" in client.predict(api_name="/session_pause")[0]
    msg, st = client.predict(1, api_name="/session_run")
    assert "background" in msg
    msg, st = client.predict(api_name="/session_stop")
    assert "stop" in msg
    for _ in range(40):
        st, *_ = client.predict("from-the-app", api_name="/session_poll")
        if st["background_run"] == "idle":
            break
        time.sleep(0.25)
    assert st["background_run"] == "idle" and st["rl_step"] == 1 and st["fast_round"] == 1
    assert "resumed" in client.predict(api_name="/session_resume")[0]
    assert not (runs_root / "from-the-app" / "stop").exists()
