"""The notebook dashboard, driven the way JupyterLab drives it: button clicks, then ``wait()``.

A tiny random-init policy keeps every step to a second or two; one session is shared by the module
(each test compares before/after instead of assuming a fresh run).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fst_lab import FSTConfig, Session
from fst_lab.harness import Harness, HarnessError
from fst_lab.ui import Dashboard
from fst_lab.ui import render
from fst_lab.ui.editor import TOOLS_JSON, build_edit, editor_texts

REPO = Path(__file__).resolve().parent.parent


def tiny_config(root, **kw) -> FSTConfig:
    base = dict(task="math", cycles=1, steps_per_cycle=1, population_size=2, num_generations=2, prompts_per_step=1,
                fast_train_size=2, fast_val_size=2, eval_size=2, max_new_tokens=8,
                fast={"budget_passes": 1, "reflection_max_tokens": 16}, slow={"kl_probe_size": 0},
                runs_root=str(root))
    base.update(kw)
    return FSTConfig(**base)


@pytest.fixture(scope="module")
def dash(tmp_path_factory):
    from fst_lab.models import tiny_policy

    s = Session(tiny_config(tmp_path_factory.mktemp("runs"), task="hover"), policy=tiny_policy(seed=0), progress=False)
    d = Dashboard(s, min_plot_interval=0.0)
    yield d
    d.close()
    s.close()


def run_files(run_dir: Path) -> dict[str, str]:
    """Every harness file of the run (lineage store + live population) with its content."""
    return {str(p.relative_to(run_dir)): p.read_text() for p in sorted((run_dir / "harnesses").rglob("*.yaml"))}


def test_renders_with_every_control(dash):
    bundle = dash._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    for b in (dash.fast_button, dash.slow_button, dash.run_button, dash.eval_button, dash.pause_button,
              dash.stop_button):
        assert b.description
    assert dash.plot.value[:8] == b"\x89PNG\r\n\x1a\n"  # a plot even before any data
    assert "population" in dash.population_view.value.lower() or "<table" in dash.population_view.value
    assert {"system_prompt", "task_template", "few_shot", "tool_description_search"} <= set(dash.editor_boxes)
    assert json.loads(dash.tools_json.value)[0]["function"]["name"] == "search"


def test_slow_click_runs_a_step_and_refreshes_the_plot(dash):
    s = dash.session
    n_metrics, step, version, png = len(s.metrics), s.counters["rl_step"], dash.plot_version, dash.plot.value
    dash.slow_n.value = 1
    dash.slow_button.click()
    assert dash.busy and dash.slow_button.disabled and dash.fast_button.disabled and not dash.stop_button.disabled
    assert dash.wait(timeout=300)
    assert dash.last_error is None, dash.last_error
    assert s.counters["rl_step"] == step + 1
    assert len(s.metrics) > n_metrics and s.metrics[-1]["kind"] == "slow"
    assert dash.plot_version > version and dash.plot.value != png
    assert not dash.slow_button.disabled and dash.stop_button.disabled  # re-enabled after the work
    assert "RL step 1" in dash.status.value or f"RL step {step + 1}" in dash.status.value
    # the step's rollouts are browsable
    assert any(v.startswith("slow_") for _, v in dash.rollout_source.options)
    assert dash.rollout_source.options[0][0].startswith("RL step")  # newest first, named in words
    assert "stop" not in dash.stop_button.button_style and "danger" not in dash.stop_button.button_style


def test_fast_click_runs_a_gepa_round_and_refreshes_population(dash):
    s = dash.session
    rnd = s.counters["fast_round"]
    dash.fast_button.click()
    assert dash.busy and dash.fast_button.disabled
    assert dash.wait(timeout=300) and dash.last_error is None, dash.last_error
    assert s.counters["fast_round"] == rnd + 1 and s.metrics[-1]["kind"] == "fast"
    for h in s.population:  # the table and the editor's targets follow the new population
        assert h.id in dash.population_view.value
        assert h.id in [v for _, v in dash.editor_target.options]


def test_invalid_tools_json_shows_error_and_changes_nothing(dash):
    s = dash.session
    pop, files = [h.id for h in s.population], run_files(s.run_dir)
    events = (s.run_dir / "events.jsonl").read_text()
    dash.editor_boxes["system_prompt"].value = "An edit that must not land."
    dash.tools_json.value = '[{"type": "function", "function": {"name": "search",'  # truncated JSON
    assert dash.apply_edit() is None
    assert "invalid JSON" in dash.editor_message.value and "not applied" in dash.editor_message.value
    # schema error: a tool without parameters
    dash.tools_json.value = json.dumps([{"type": "function", "function": {"name": "search", "description": "x"}}])
    dash.apply_button.click()
    assert "not applied" in dash.editor_message.value and "parameters" in dash.editor_message.value
    # not a list
    dash.tools_json.value = '{"type": "function"}'
    dash.apply_button.click()
    assert "expected a JSON list" in dash.editor_message.value
    assert [h.id for h in s.population] == pop
    assert run_files(s.run_dir) == files
    assert (s.run_dir / "events.jsonl").read_text() == events
    dash.revert_button.click()
    assert dash.editor_boxes["system_prompt"].value == s.population[0].system_prompt


def test_apply_valid_edit_creates_manual_node_and_shows_diff(dash):
    s = dash.session
    old = dash.editor.harness
    dash.editor_boxes["system_prompt"].value = "Look every entity up with search. End with 'Answer: SUPPORTED'."
    new = dash.apply_edit()
    assert new is not None and new.lineage.origin == "manual" and list(new.lineage.parents) == [old.id]
    assert new.id in [h.id for h in s.population] and old.id not in [h.id for h in s.population]
    assert any(r["id"] == new.id and r["origin"] == "manual" for r in s.lineage())
    assert "Look every entity up with search" in dash.diff_view.value and '">+' in dash.diff_view.value
    assert "applied" in dash.editor_message.value
    assert new.id in dash.population_view.value and "manual" in dash.lineage_view.value
    assert dash.editor.harness.id == new.id  # the editor now shows the new node
    edits = [json.loads(l) for l in (s.run_dir / "events.jsonl").read_text().splitlines() if '"edit"' in l]
    assert edits and edits[-1]["id"] == new.id
    # an unchanged editor applies nothing
    assert dash.apply_edit() is None and "nothing changed" in dash.editor_message.value


def test_apply_tools_json_change_edits_the_tool_list(dash):
    s = dash.session
    old = dash.editor.harness
    tools = json.loads(dash.tools_json.value)
    tools[0]["function"]["parameters"]["properties"]["query"]["description"] = "Exact entity name, e.g. 'Talwick'."
    dash.tools_json.value = json.dumps(tools, indent=2)
    dash.editor_boxes["tool_description_search"].value = "Search the encyclopedia for one entity."
    new = dash.apply_edit()
    assert new is not None and new.lineage.origin == "manual"
    fn = new.tools[0]["function"]
    assert fn["description"] == "Search the encyclopedia for one entity."  # the description box wins
    assert fn["parameters"]["properties"]["query"]["description"].startswith("Exact entity name")
    assert new.id in [h.id for h in s.population] and old.id in new.lineage.parents


def test_slow_step_after_a_manual_edit_uses_it(dash):
    s = dash.session
    edited = dash.editor.harness
    dash.slow_button.click()
    assert dash.wait(timeout=300) and dash.last_error is None, dash.last_error
    assert edited.id in s.metrics[-1]["population"]


def test_pause_then_stop_ends_a_multi_step_run_and_the_next_click_works(dash):
    s = dash.session
    step = s.counters["rl_step"]
    dash.slow_n.value = 50
    dash.slow_button.click()
    dash.pause_button.click()  # holds the work at the next step boundary
    assert s.paused and dash.pause_button.description == "Resume" and "paused" in dash.status.value
    dash.stop_button.click()
    assert dash.wait(timeout=300)
    assert step <= s.counters["rl_step"] <= step + 1  # at most the step already under way
    assert "stopped" in dash.status.value and not s.paused and dash.pause_button.disabled
    dash.slow_n.value = 1
    step = s.counters["rl_step"]
    dash.slow_button.click()
    assert dash.wait(timeout=300) and dash.last_error is None, dash.last_error
    assert s.counters["rl_step"] == step + 1  # the earlier stop does not swallow new work


def test_evaluate_fills_the_rollout_browser(dash):
    dash.eval_button.click()
    assert dash.wait(timeout=300) and dash.last_error is None, dash.last_error
    assert dash.rollout_source.value == "last evaluate() (in memory)"
    assert len(dash.rollout_pick.options) == len(dash.session.last_trajectories) > 0
    assert "reward" in dash.rollout_view.value and "feedback" in dash.rollout_view.value
    labels = dict(dash.rollout_source.options)  # sources are named in words, newest first
    src = next(v for label, v in dash.rollout_source.options if label.startswith("RL step"))
    assert "slow_" not in "".join(labels)
    dash.rollout_source.value = src
    assert "example" in dash.rollout_view.value


def test_worker_error_is_shown_not_raised(tmp_path):
    from fst_lab.models import tiny_policy

    s = Session(tiny_config(tmp_path, mode="rl"), policy=tiny_policy(seed=0), progress=False)
    d = Dashboard(s, min_plot_interval=0.0)
    assert d.fast_button.disabled  # mode 'rl' has no fast steps
    assert d.start_fast()  # called anyway (e.g. from code): the error lands in the dashboard
    assert d.wait(timeout=60)
    assert "SessionError" in d.last_error and "no fast steps" in d.error.value
    assert not d.busy and not d.run_button.disabled
    d.close()


# ---------------------------------------------------------------------------- pure helpers
def test_build_edit_variants():
    h = Harness.load(REPO / "harnesses" / "hover.yaml")
    texts = editor_texts(h)
    assert build_edit(h, texts) is None
    t2 = dict(texts, system_prompt="x")
    assert build_edit(h, t2) == {"system_prompt": "x"}
    with pytest.raises(HarnessError, match="few_shot"):
        build_edit(h, dict(texts, few_shot="- not: [a, conversation"))
    with pytest.raises(HarnessError, match="placeholder"):
        build_edit(h, dict(texts, task_template="no placeholder"))
    tools = json.loads(texts[TOOLS_JSON])
    with pytest.raises(HarnessError, match="no longer has a tool named 'search'"):
        build_edit(h, dict(texts, tool_description_search="y", **{TOOLS_JSON: "[]"}))
    h2 = build_edit(h, dict(texts, **{TOOLS_JSON: json.dumps(tools + [{"type": "function", "function": {
        "name": "lookup", "description": "d", "parameters": {"type": "object", "properties": {}}}}])}))
    assert isinstance(h2, Harness) and h2.tool_names == ["search", "lookup"]
    with pytest.raises(HarnessError, match="duplicate tool name"):
        build_edit(h, dict(texts, **{TOOLS_JSON: json.dumps(tools + tools)}))


def test_trajectory_html_shows_tool_calls_and_escapes():
    t = {"example_id": "ex<1>", "harness_id": "abc", "sample": 0, "reward": 1.0, "feedback": "Correct <b>!</b>",
         "n_prompt_messages": 1, "messages": [
             {"role": "user", "content": "Claim: <script>alert(1)</script>"},
             {"role": "assistant", "content": "Let me look.", "tool_calls": [
                 {"id": "c1", "type": "function", "function": {"name": "search", "arguments": {"query": "Talwick"}}}]},
             {"role": "tool", "name": "search", "content": "Talwick: a town."},
             {"role": "assistant", "content": "Answer: SUPPORTED"}]}
    out = render.trajectory_html(t)
    assert "<script>" not in out and "&lt;script&gt;" in out and "ex&lt;1&gt;" in out
    assert "tool call" in out and "search(" in out and "Talwick: a town." in out
    assert "tool result (search)" in out and "Correct &lt;b&gt;!&lt;/b&gt;" in out


def test_progress_png_handles_every_record_kind():
    from fst_lab.ui.plots import per_harness_rewards, progress_png

    recs = [{"kind": "fast", "round": 1, "samples": 4, "best_val": 0.5, "val_scores": {"a": 0.5, "b": 0.25}},
            {"kind": "slow", "rl_step": 1, "samples": 8, "reward": 0.25, "kl": 0.01,
             "reward_by_harness": {"a": 0.5, "b": 0.0}},
            {"kind": "eval", "samples": 8, "reward": 0.5, "kl_probe": 0.02}]
    assert per_harness_rewards(recs)[0] == "RL step"
    assert per_harness_rewards(recs[:1])[1] == {"a": [(1, 0.5)], "b": [(1, 0.25)]}
    assert progress_png(recs, {"a": 0.5, "b": 0.25}, {"a": "gepa", "b": "manual"})[:4] == b"\x89PNG"
    assert progress_png([])[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------- truthful state (issues 15/16)
def test_dashboard_reports_busy_while_a_cell_steps_the_session(dash):
    """A notebook cell calling session.slow_step() (here: a plain thread, as the kernel would) makes the
    dashboard say what runs and disables its work buttons; afterwards it is idle again."""
    import threading
    import time

    s = dash.session
    cell = threading.Thread(target=lambda: s.slow_step(1))
    cell.start()
    seen_busy = seen_disabled = False
    deadline = time.time() + 120
    while cell.is_alive() and time.time() < deadline:
        if "slow step" in dash.status.value and "idle" not in dash.status.value:
            seen_busy = True
        if dash.slow_button.disabled and dash.fast_button.disabled and not dash.stop_button.disabled:
            seen_disabled = True
        time.sleep(0.05)
    cell.join()
    assert seen_busy, dash.status.value
    assert seen_disabled
    time.sleep(dash.status_interval * 3)
    assert "idle" in dash.status.value and not dash.slow_button.disabled and dash.stop_button.disabled


def test_progress_text_follows_the_step(dash):
    """The runner turns progress events into the status line while the step runs."""
    import time

    texts = []
    dash.fast_button.click()
    while dash.busy:
        v = dash.status.value
        if "GEPA metric calls" in v or "rollouts" in v:
            if not texts or texts[-1] != v:
                texts.append(v)
        time.sleep(0.02)
    assert dash.wait(timeout=300) and dash.last_error is None, dash.last_error
    assert len(texts) >= 2, texts


def test_saved_output_has_a_static_rendering(dash):
    bundle = dash._repr_mimebundle_()
    html = bundle["text/html"]
    assert "fst-dashboard-snapshot" in html and "data:image/png;base64," in html and "<table" in html
    assert "VBox(" not in bundle["text/plain"]
    snap = dash.snapshot()
    assert "fst-dashboard-snapshot" in snap.data


def test_plot_gives_two_harnesses_of_one_origin_different_colours():
    from matplotlib.colors import to_hex

    from fst_lab.ui.plots import progress_figure

    recs = [{"kind": "slow", "rl_step": i, "samples_rl": 8 * i, "samples_fast": 0, "rollouts": 8, "reward": 0.5,
             "reward_by_harness": {"boot1": 0.25 * i, "boot2": 0.5}} for i in (1, 2, 3)]
    fig = progress_figure(recs, {"boot1": 0.5, "boot2": 0.0}, {"boot1": "bootstrap", "boot2": "bootstrap"})
    per_harness = fig.axes[2]
    colors = {line.get_label(): to_hex(line.get_color()) for line in per_harness.get_lines()}
    assert len(colors) == 2 and len(set(colors.values())) == 2, colors
    # integer ticks on the RL-step axis, and a bar for a score of 0 is labelled, not empty
    assert all(float(t).is_integer() for t in per_harness.get_xticks())
    assert any(t.get_text() == "0.000" for t in fig.axes[3].texts)
    # legible fonts
    assert min(t.get_fontsize() for t in per_harness.get_xticklabels()) >= 9


def test_reward_vs_samples_train_points_have_increasing_x():
    from fst_lab.ui.plots import curve_figures

    recs = [{"kind": "slow", "rl_step": i, "samples_rl": 8 * i, "samples_fast": 4, "samples": 8 * i + 4,
             "rollouts": 8, "reward": 0.1 * i} for i in (1, 2, 3, 4)]
    fig, _ = curve_figures(recs)
    train = next(line for line in fig.axes[0].get_lines() if line.get_label().startswith("train"))
    xs = list(train.get_xdata())
    assert xs == sorted(xs) and len(set(xs)) == len(xs)


def test_result_summary_states_the_result():
    recs = [{"kind": "eval", "reward": 0.375, "samples": 0}, {"kind": "eval", "reward": 0.5625, "samples": 40},
            {"kind": "ablation", "base_weights+seed_harness": 0.375, "base_weights+evolved_harness": 0.5625,
             "trained_weights+seed_harness": 0.4375, "trained_weights+evolved_harness": 0.5625}]
    line = render.result_summary(recs)
    assert "validation 0.375 → 0.562" in line
    assert "base+seed 0.375" in line and "trained+evolved 0.562" in line
    assert "one answer" not in line  # records without answer statistics (older runs) say nothing of them


def test_result_summary_says_how_many_training_rollouts_gave_no_answer(tmp_path):
    """HoVer's sampled training reward (0.03-0.44) sat far below its greedy validation (0.47-0.50) with no
    hint why: the summary and `fst-lab compare` now say what share of the last step's rollouts gave no answer."""
    import json

    from fst_lab.report import summary_rows

    step = {"kind": "slow", "rl_step": 12, "reward": 0.125, "fst/answer_unparsed": 0.625, "samples": 384}
    line = render.result_summary([{"kind": "eval", "reward": 0.5, "samples": 0}, step])
    assert "last train reward 0.125 (RL step 12; 62% of rollouts gave no answer)" in line
    # with the share cut off at the token cap, which says whether max_new_tokens is to blame
    assert render.train_unparsed_text({**step, "fst/truncated": 0.375}) == (
        "62% of rollouts gave no answer, 38% hit the token cap")
    assert "gave no answer" not in render.result_summary([{**step, "fst/answer_unparsed": 0.0}])
    assert "last train reward 0.125 (RL step 12)" in render.result_summary([{k: v for k, v in step.items()
                                                                            if not k.startswith("fst/")}])
    html = render.status_html({"mode": "rl", "task": "hover"}, {"busy": False}, last_step=step)
    assert "last RL step reward 0.125 (62% of rollouts gave no answer)" in html
    d = tmp_path / "r"
    d.mkdir()
    (d / "config.yaml").write_text("mode: rl\ntask: hover\n")
    (d / "state.json").write_text("{}")
    (d / "metrics.jsonl").write_text(json.dumps(step) + "\n")
    assert summary_rows([d])[0]["train_unparsed_last"] == 0.625


def test_result_summary_calls_out_a_reward_a_constant_answer_earns(tmp_path):
    """An RL run on balanced labels can collapse to one answer and read 0.5: the summary says so, and
    `fst-lab compare` shows every run's last answer distribution; a varied evaluation raises no flag."""
    from fst_lab.report import summary_rows

    ev = {"kind": "eval", "reward": 0.5, "samples": 96, "answer_top": "SUPPORTED", "answer_top_share": 1.0,
          "answer_unparsed": 0.0, "constant_floor": 0.5}
    line = render.result_summary([{"kind": "eval", "reward": 0.56, "samples": 0}, ev])
    assert "⚠ last evaluation gave one answer: 100% 'SUPPORTED' (a constant answer scores 0.500)" in line
    mostly = render.result_summary([{**ev, "answer_top_share": 0.98}])
    assert "⚠ last evaluation gave mostly one answer: 98% 'SUPPORTED'" in mostly  # not "one answer" at 98%
    varied = {**ev, "reward": 0.7, "answer_top_share": render.COLLAPSE_SHARE - 0.05}
    assert "one answer" not in render.result_summary([varied])
    assert render.answers_text({**ev, "answer_top": None, "answer_top_share": 0.0}) == "no answer parsed"
    # A varied evaluation whose reward a constant answer matches within its noise is called out (HoVer at
    # level 1 for the 135M policy: 0.469 on 64 claims against 0.500); one clear of that band is not.
    chance = {**ev, "reward": 0.46875, "n": 64, "answer_top_share": 0.62}
    assert render.answers_warning(chance) == ("scored 0.469, within 2 standard errors (±0.125) of a constant "
                                              "answer's 0.500")
    assert render.answers_warning({**chance, "reward": 0.7}) is None  # 0.2 above, band ±0.115
    assert "(±0.122)" in render.answers_warning({**chance, "reward": 0.4})  # 0.1 below: noise on 64 examples
    assert render.answers_warning({**chance, "reward": 0.4, "n": 1000}) is None  # but not on 1000: band ±0.031
    # An evaluation where (nearly) nothing parsed is called out too: its reward is the format failing.
    silent = {**ev, "reward": 0.0, "answer_top": None, "answer_top_share": 0.0, "answer_unparsed": 1.0}
    assert "⚠ last evaluation parsed no answer in 100% of examples" in render.result_summary([silent])
    assert "⚠ it parsed no answer in 100% of examples" in render.status_html(
        {"mode": "rl"}, {"busy": False}, last_eval=silent)
    assert render.answers_text({"kind": "eval", "reward": 0.5}) is None
    # The notebook dashboard's status shows the last evaluation, and the same warning under it.
    st = {"mode": "rl", "task": "hover", "cycle": 1, "rl_step": 6, "fast_round": 0, "samples": 192}
    html = render.status_html(st, {"busy": False}, last_eval=ev)
    assert "last evaluation 0.500" in html and "⚠ it gave one answer: 100% &#x27;SUPPORTED&#x27;" in html
    html = render.status_html(st, {"busy": False}, last_eval=varied)
    assert "last evaluation 0.700" in html and "one answer" not in html
    assert "last evaluation" not in render.status_html(st, {"busy": False})
    (tmp_path / "config.yaml").write_text("mode: rl\ntask: hover\n")
    (tmp_path / "state.json").write_text("{}")
    (tmp_path / "metrics.jsonl").write_text(json.dumps(ev) + "\n")
    assert summary_rows([tmp_path])[0]["answers_last"] == "100% 'SUPPORTED' (a constant answer scores 0.500)"


def test_an_rl_only_population_reads_no_gepa_score_not_unevaluated():
    """An RL-only run evaluates its seed harness every few steps but never runs a GEPA round, so its member has
    no GEPA score: the lineage and population views say that, not "not evaluated" (a hand edit still is)."""
    edges = [{"id": "a1", "name": "hover", "origin": "seed", "round": 0, "parents": []},
             {"id": "b2", "name": "hover", "origin": "manual", "round": 1, "parents": ["a1"]}]
    rl = render.lineage_tree(edges, population=["a1"], mode="rl")
    assert "hover@a1  no GEPA score (RL-only)  ● population" in rl and "not evaluated" not in rl
    fst = render.lineage_tree(edges, population=["a1", "b2"], scores={"a1": 0.5}, mode="fst")
    assert "hover@a1  score 0.500" in fst and "hover@b2  not evaluated" in fst
    assert "<i>no GEPA score (RL-only)</i>" in render.population_html(edges, ["a1"], mode="rl")
    assert "<i>not evaluated</i>" in render.population_html(edges, ["b2"], mode="fst")
    # The dashboard's population-scores panel writes the same beside the bar.
    from fst_lab.ui import plots

    def bar_texts(mode):
        fig = plots.progress_figure([], {"a1": None}, {"a1": "seed"}, mode=mode)
        return [t.get_text() for t in fig.axes[3].texts]

    assert "no GEPA score (RL-only)" in bar_texts("rl") and "not evaluated" in bar_texts("fst")


def test_reward_plot_draws_the_constant_answer_floor_when_recorded():
    """The reward plot shows what one constant answer scores (HoVer: 0.5), so a flat validation curve on it
    reads as no skill; runs recorded before the statistics existed draw no such line."""
    from fst_lab.ui import plots

    ev = {"kind": "eval", "reward": 0.5, "samples": 0, "n": 64, "constant_floor": 0.5, "answer_top_share": 0.6}
    fig, _ = plots.curve_figures([ev, {**ev, "samples": 96, "reward": 0.47}])
    floor = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("one constant answer")]
    assert len(floor) == 1 and floor[0].get_label() == "one constant answer (0.500)"
    assert list(floor[0].get_ydata()) == [0.5, 0.5]
    fig, _ = plots.curve_figures([{"kind": "eval", "reward": 0.5, "samples": 0}])
    assert not [ln for ln in fig.axes[0].get_lines() if "constant" in ln.get_label()]
    # `fst-lab compare` of two HoVer runs: one floor line, not one per run.
    fig, _ = plots.compare_figures({"rl": [ev], "fst": [{**ev, "reward": 0.47}]})
    assert [ln.get_label() for ln in fig.axes[0].get_lines() if "constant" in ln.get_label()] == [
        "one constant answer (0.500)"]
    # Two math problems with different answers: a constant answer hits one of them by luck (0.5), which is no
    # strategy, so neither the plot nor the summary offers it as a floor; 2 of 64 sharing an answer is one.
    lucky = {"kind": "eval", "reward": 0.0, "samples": 0, "n": 2, "constant_floor": 0.5, "answer_top": "7",
             "answer_top_share": 1.0, "answer_unparsed": 0.0}
    fig, _ = plots.curve_figures([lucky])
    assert not [ln for ln in fig.axes[0].get_lines() if "constant" in ln.get_label()]
    assert render.answers_text(lucky) == "100% '7'"
    assert render.answers_text({**lucky, "n": 64, "constant_floor": 2 / 64}) == "100% '7' (a constant answer scores 0.031)"


def test_a_single_point_plot_has_whole_number_sample_ticks():
    """After one GEPA round the reward plot has one point (6 samples): its axis shows whole samples, not
    5.68, 5.76, …"""
    from fst_lab.ui import plots

    fig, _ = plots.curve_figures([{"kind": "fast", "samples": 6, "best_val": 0.0, "round": 1}])
    ax = fig.axes[0]
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert 6 in ticks and all(float(t).is_integer() for t in ticks), ticks


def test_reward_plot_says_how_each_curve_was_sampled():
    """RL rollouts are sampled, the default evaluation is greedy: the legend says so, so the (often large) gap
    between the two curves is not read as overfitting; evaluations at another temperature say which."""
    from fst_lab.ui import plots

    slow = {"kind": "slow", "reward": 0.2, "samples": 32, "samples_rl": 32, "samples_fast": 0, "rl_step": 1}
    ev = {"kind": "eval", "reward": 0.5, "samples": 0, "n": 64, "k": 1, "temperature": 0.0}
    labels = lambda recs: [ln.get_label() for ln in plots.curve_figures(recs)[0].axes[0].get_lines()]  # noqa: E731
    assert labels([slow, ev, {**ev, "samples": 32}])[:2] == ["train (RL step, sampled)",
                                                             "validation (running max, greedy)"]
    assert "validation (running max, temperature 0.7)" in labels([{**ev, "k": 4, "temperature": 0.7}])
    assert "validation (running max)" in labels([ev, {**ev, "temperature": 0.7}])  # mixed: no claim
    assert "validation (running max)" in labels([{k: v for k, v in ev.items() if k != "temperature"}])


def test_reward_plot_shows_each_evaluation_beside_the_running_max():
    """A run whose validation peaks and then drops: the running max alone would show the peak as where it ended."""
    from fst_lab.ui import plots

    ev = [{"kind": "eval", "reward": r, "samples": 32 * i, "n": 64, "k": 1} for i, r in enumerate([0.5, 0.625, 0.48])]
    lines = {ln.get_label(): ln for ln in plots.curve_figures(ev)[0].axes[0].get_lines()}
    assert list(lines["validation (running max)"].get_ydata()) == [0.5, 0.625, 0.625]
    assert list(lines["validation (each evaluation)"].get_ydata()) == [0.5, 0.625, 0.48]
