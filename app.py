"""The fst_lab app: compare harnesses side by side, see how they evolved, and steer a live run.

    python app.py [--runs-root runs] [--port 7860]      # or: make app / fst-lab app

Tabs:
- **Arena**: one input (free text, or a task example with its score and feedback) goes to two
  harnesses — by default the run's seed harness vs its best evolved one — with the base or the
  trained weights; both answers stream in, tool calls and observations as collapsible messages. The
  agent loop is :func:`fst_lab.rollout.rollout_pairs`, the one training uses.
- **Evolution**: the line diff of the two harnesses, the population's lineage tree, reward vs
  samples and KL vs reward.
- **Run**: start a Session from a YAML config, step fast / slow, run / pause / stop, hand-edit a
  harness of the live population (a ``manual`` lineage node).

Safe defaults: binds 127.0.0.1; opens run directories only inside ``--runs-root`` and only through
:mod:`fst_lab.runs`' pure loaders (JSON/YAML) plus safetensors adapters; api_key-like fields are
redacted from everything shown. Every event has an ``api_name``, so ``gradio_client`` can drive it all.
Without any run it still demos: pick two files from ``harnesses/`` and the embedded model answers.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path
from typing import Any, Callable

import gradio as gr

from fst_lab import appkit as K
from fst_lab.harness import HarnessError
from fst_lab.runs import RunDirError

HOST = "127.0.0.1"


def build_app(runs_root: str | Path = "runs", *, policy_factory: Callable[[str], Any] | None = None,
              harness_dir: str | Path | None = None) -> gr.Blocks:
    """The whole app as a ``gr.Blocks`` (not launched).

    ``policy_factory(model_name) -> Policy`` builds the policy (default: ``fst_lab.models.load_policy``,
    cached per model name); tests pass ``lambda name: tiny_policy()`` to stay fast.
    """
    catalog = K.Catalog(runs_root, harness_dir)
    policies = K.PolicyCache(policy_factory)
    steering = K.Steering(catalog.runs_root, policy_factory)

    # ------------------------------------------------------------------ explorer callbacks
    def _open(run_name: str | None):
        """(RunView or None, message). A refused or unreadable run is a message, never an exception."""
        if not run_name:
            return None, ""
        try:
            return catalog.open_run(run_name), ""
        except RunDirError as e:
            return None, f"❌ {e}"

    def _spec(run, task_name: str | None, harness=None) -> K.TaskSpec:
        spec = K.task_spec_for(run, harness)
        if task_name and task_name != spec.name:
            return K.TaskSpec(task_name)
        return spec

    def _examples_dd(spec: K.TaskSpec):
        try:
            return gr.Dropdown(choices=K.example_choices(spec), value=K.FREE_TEXT)
        except Exception as e:  # an unknown task: free text only
            return gr.Dropdown(choices=[(f"free text only ({e})", K.FREE_TEXT)], value=K.FREE_TEXT)

    def list_runs_fn():
        return gr.Dropdown(choices=[("(no run: harness files only)", "")] + catalog.run_names())

    def select_run(run_name):
        run, msg = _open(run_name)
        if msg:  # refused / unreadable: say so, fall back to the harness files
            status = msg
        elif run is None:
            status = (f"No run selected: the arena compares harness files from `{catalog.harness_dir.name}/` "
                      f"with the base model. Runs are read from `{catalog.runs_root}`.")
        else:
            status = K.run_summary(run)
        choices, a, b = catalog.harness_choices(run, None)
        ha = _safe_resolve(a, run)
        spec = _spec(run, None, ha)
        tasks = K.task_names()
        diff_text, diff_view = _diff(run, a, b)
        fig1, fig2 = K.curve_figures(run)
        return (status, gr.Dropdown(choices=K.cycle_choices(run), value="latest"),
                gr.Dropdown(choices=choices, value=a), gr.Dropdown(choices=choices, value=b),
                gr.Dropdown(choices=tasks if spec.name in tasks else tasks + [spec.name], value=spec.name),
                _examples_dd(spec), K.config_yaml(run) if run is not None else "", diff_text, diff_view,
                _lineage(run, None), fig1, fig2)

    def select_cycle(run_name, cycle):
        run, msg = _open(run_name)
        try:
            choices, a, b = catalog.harness_choices(run, cycle)
        except RunDirError as e:
            return gr.Dropdown(), gr.Dropdown(), f"❌ {e}", gr.Code()
        status = msg or (K.run_summary(run) + f"\n\nshowing cycle **{cycle or 'latest'}**" if run else "")
        return (gr.Dropdown(choices=choices, value=a), gr.Dropdown(choices=choices, value=b), status,
                _lineage(run, cycle))

    def list_examples(run_name, task_name):
        run, _ = _open(run_name)
        return _examples_dd(_spec(run, task_name))

    def _safe_resolve(ref, run):
        try:
            return catalog.resolve_harness(ref, run) if ref else None
        except (RunDirError, HarnessError):
            return None

    def _diff(run, ref_a, ref_b):
        try:
            ha, hb = catalog.resolve_harness(ref_a, run), catalog.resolve_harness(ref_b, run)
        except (RunDirError, HarnessError) as e:
            return f"# {e}", f"<p>❌ {e}</p>"
        d = ha.diff(hb)
        return d or "# identical (lineage aside)", K.diff_html(d)

    def diff_fn(run_name, ref_a, ref_b):
        run, msg = _open(run_name)
        if msg:
            return f"# {msg}", f"<p>{msg}</p>"
        return _diff(run, ref_a, ref_b)

    def _lineage(run, cycle):
        if run is None:
            return "(lineage needs a run)"
        try:
            rec = run.population_record(K.parse_cycle(cycle))
        except RunDirError as e:
            return f"❌ {e}"
        pop = [m["id"] for m in rec.get("members", [])]
        scores = rec.get("scores", {}) or {}
        best = run.best_harness(K.parse_cycle(cycle)) if pop else None
        return K.lineage_tree(run.lineage_edges(), population=pop, scores=scores, best=best.id if best else None)

    def lineage_fn(run_name, cycle):
        run, msg = _open(run_name)
        return msg or _lineage(run, cycle)

    def curves_fn(run_name):
        run, _ = _open(run_name)
        return K.curve_figures(run)

    # ------------------------------------------------------------------ arena callback (streaming)
    def arena(run_name, cycle, ref_a, ref_b, weights, task_name, example_id, free_text, max_new_tokens,
              temperature):
        empty = ([], [], "", "")
        run, msg = _open(run_name)
        if msg:
            yield (*empty, msg)
            return
        try:
            ha, hb = catalog.resolve_harness(ref_a, run), catalog.resolve_harness(ref_b, run)
        except (RunDirError, HarnessError) as e:
            yield (*empty, f"❌ {e}")
            return
        spec = _spec(run, task_name, ha)
        scored = bool(example_id)
        try:
            task = K.get_task_cached(spec)
        except Exception as e:  # e.g. a user task that needs constructor arguments
            if scored:
                yield (*empty, f"❌ task '{spec.name}': {e}")
                return
            task = None  # free text still works, without the task's tools
        if scored:
            try:
                ex_a = ex_b = K.find_example(spec, example_id)
            except KeyError as e:
                yield (*empty, f"❌ {e.args[0]}")
                return
        else:
            if not (free_text or "").strip():
                yield (*empty, "⚠️ type an input or pick a task example")
                return
            ex_a, ex_b = K.free_text_example(ha, free_text), K.free_text_example(hb, free_text)
            task = K.Unscored(task)
        yield (*empty, "loading the policy…")
        policy, notice = policies.for_run(run, weights or "base")
        notice += f" · task `{spec.name}` · max {int(max_new_tokens)} new tokens/turn · temperature {temperature}"
        for up in K.stream_arena(policy, [(ha, ex_a), (hb, ex_b)], task, max_new_tokens=int(max_new_tokens),
                                 temperature=float(temperature)):
            if not up.done:
                yield up.chats[0], up.chats[1], "*generating…*", "*generating…*", notice
                continue
            if up.error:
                yield up.chats[0], up.chats[1], f"❌ {up.error}", f"❌ {up.error}", notice
                return
            ta, tb = up.trajectories
            yield (up.chats[0], up.chats[1], K.score_markdown(ta, scored), K.score_markdown(tb, scored), notice)

    # ------------------------------------------------------------------ Run tab callbacks
    def _session_views():
        st = steering.status()
        targets = steering.population_choices()
        return (st, gr.Dropdown(choices=targets, value=targets[0][1] if targets else None),
                steering.lineage_text(), steering.log_text())

    def session_start(config_text):
        msg = steering.start(config_text)
        st, targets, lin, log_text = _session_views()
        choices = steering.population_choices()
        first = choices[0][1] if choices else None
        comps = steering.components(first)
        comp = comps[0] if comps else None
        return (msg, st, targets, gr.Dropdown(choices=comps, value=comp), steering.component_text(first, comp),
                lin, log_text)

    def session_fast(progress=gr.Progress()):
        progress(0, desc="fast step: one GEPA round…")
        msg = steering.fast()
        return (msg, *_session_views())

    def session_slow(n, progress=gr.Progress()):
        n = max(1, int(n or 1))
        msg = steering.slow(n, progress=lambda i, total: progress((i, total), desc=f"slow step {i + 1}/{total}"))
        return (msg, *_session_views())

    def session_run(cycles):
        msg = steering.run(int(cycles) if cycles else None)
        return msg, steering.status()

    def session_pause():
        return steering.pause(), steering.status()

    def session_resume():
        return steering.resume(), steering.status()

    def session_stop():
        return steering.stop(), steering.status()

    def session_poll():
        return steering.status(), steering.lineage_text(), steering.log_text()

    def session_components(target):
        comps = steering.components(target)
        first = comps[0] if comps else None
        return gr.Dropdown(choices=comps, value=first), steering.component_text(target, first)

    def session_component_text(target, component):
        return steering.component_text(target, component)

    def session_edit(target, component, text, note):
        msg = steering.edit(target, component, text, note)
        return (msg, *_session_views())

    # ------------------------------------------------------------------ layout
    with gr.Blocks(title="fst_lab · Learning, Fast and Slow") as demo:
        gr.Markdown("## fst_lab · Learning, Fast and Slow\nFast weights = the **harness** (evolved by GEPA) · "
                    "slow weights = the **policy** (trained by RL). Pick a run, compare harnesses, steer a session.")
        with gr.Row():
            run_dd = gr.Dropdown(label="Run", choices=[("(no run: harness files only)", "")] + catalog.run_names(),
                                 value="", allow_custom_value=True, scale=4)
            cycle_dd = gr.Dropdown(label="Cycle (population snapshot)", choices=["latest"], value="latest",
                                   allow_custom_value=True, scale=1)
            refresh_btn = gr.Button("↻ runs", scale=0, min_width=80)
        run_status = gr.Markdown()
        choices0, a0, b0 = catalog.harness_choices(None)
        with gr.Row():
            harness_a = gr.Dropdown(label="Harness A", choices=choices0, value=a0, allow_custom_value=True)
            harness_b = gr.Dropdown(label="Harness B", choices=choices0, value=b0, allow_custom_value=True)
            weights = gr.Radio(["base", "trained"], value="base", label="Weights",
                               info="trained = the run's latest checkpoint (LoRA adapter)")
        with gr.Tabs():
            with gr.Tab("Arena"):
                with gr.Row():
                    task_dd = gr.Dropdown(label="Task", choices=K.task_names(), value="hover", allow_custom_value=True,
                                          scale=1)
                    example_dd = gr.Dropdown(label="Input: a task example (scored) or free text",
                                             choices=[("✍️ free text (type below)", K.FREE_TEXT)],
                                             value=K.FREE_TEXT, allow_custom_value=True, scale=3)
                free_text = gr.Textbox(label="Free text", placeholder="e.g. a claim, a question…", lines=2)
                with gr.Row():
                    max_tokens = gr.Slider(8, 512, value=64, step=8, label="max new tokens per turn")
                    temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.1, label="temperature (0 = greedy)")
                    go_btn = gr.Button("▶ Run both", variant="primary")
                notice = gr.Markdown()
                with gr.Row():
                    with gr.Column():
                        chat_a = gr.Chatbot(label="Harness A", height=460, elem_id="chat-a")
                        score_a = gr.Markdown(elem_id="score-a")
                    with gr.Column():
                        chat_b = gr.Chatbot(label="Harness B", height=460, elem_id="chat-b")
                        score_b = gr.Markdown(elem_id="score-b")
            with gr.Tab("Evolution"):
                with gr.Row():
                    diff_btn = gr.Button("Diff A → B")
                    lineage_btn = gr.Button("Lineage")
                    curves_btn = gr.Button("Curves")
                diff_view = gr.HTML(label="diff")
                with gr.Accordion("raw unified diff", open=False):
                    diff_code = gr.Code(label="unified diff", language=None, show_line_numbers=False)
                lineage_code = gr.Code(label="lineage (● in population, ★ best)", language=None,
                                       show_line_numbers=False)
                with gr.Row():
                    plot_reward = gr.Plot(label="reward vs samples")
                    plot_kl = gr.Plot(label="KL vs reward")
                with gr.Accordion("run config (secrets redacted)", open=False):
                    config_code = gr.Code(language="yaml", show_line_numbers=False)
            with gr.Tab("Run"):
                gr.Markdown("Start a Session (it writes a run directory under the runs root), step it, or run its "
                            "schedule in the background. Same API as the notebook widgets.")
                with gr.Row():
                    config_box = gr.Code(value=K.TINY_CONFIG, language="yaml", label="config (FSTConfig YAML)",
                                         interactive=True, lines=14)
                    with gr.Column():
                        start_btn = gr.Button("Start session", variant="primary")
                        with gr.Row():
                            fast_btn = gr.Button("Fast step (GEPA)")
                            slow_n = gr.Number(value=1, precision=0, minimum=1, label="RL steps", min_width=80)
                            slow_btn = gr.Button("Slow step(s) (RL)")
                        with gr.Row():
                            run_cycles = gr.Number(value=1, precision=0, minimum=1, label="cycles", min_width=80)
                            run_btn = gr.Button("Run ▶")
                            pause_btn = gr.Button("Pause ⏸")
                            resume_btn = gr.Button("Resume")
                            stop_btn = gr.Button("Stop ⏹", variant="stop")
                        session_msg = gr.Markdown()
                        session_status = gr.JSON(label="status")
                with gr.Accordion("edit a harness of the live population (recorded as a manual edit)", open=True):
                    with gr.Row():
                        edit_target = gr.Dropdown(label="harness", choices=[], allow_custom_value=True)
                        edit_component = gr.Dropdown(label="component", choices=[], allow_custom_value=True)
                        edit_note = gr.Textbox(label="note", placeholder="why this edit")
                    edit_text = gr.Textbox(label="component text", lines=6)
                    edit_btn = gr.Button("Apply edit")
                with gr.Row():
                    session_lineage = gr.Code(label="live lineage", language=None, show_line_numbers=False)
                    session_log = gr.Code(label="events & metrics", language=None, show_line_numbers=False)
                timer = gr.Timer(3.0)

        # ------------------------------------------------------------------ events (each has an api_name)
        select_outputs = [run_status, cycle_dd, harness_a, harness_b, task_dd, example_dd, config_code, diff_code,
                          diff_view, lineage_code, plot_reward, plot_kl]
        refresh_btn.click(list_runs_fn, None, run_dd, api_name="list_runs")
        run_dd.change(select_run, run_dd, select_outputs, api_name="select_run")
        cycle_dd.input(select_cycle, [run_dd, cycle_dd], [harness_a, harness_b, run_status, lineage_code],
                       api_name="select_cycle")
        task_dd.input(list_examples, [run_dd, task_dd], example_dd, api_name="examples")
        harness_a.input(diff_fn, [run_dd, harness_a, harness_b], [diff_code, diff_view], api_name="pick_harness_a")
        harness_b.input(diff_fn, [run_dd, harness_a, harness_b], [diff_code, diff_view], api_name="pick_harness_b")
        arena_inputs = [run_dd, cycle_dd, harness_a, harness_b, weights, task_dd, example_dd, free_text, max_tokens,
                        temperature]
        arena_outputs = [chat_a, chat_b, score_a, score_b, notice]
        # one policy, one arena at a time: both triggers share a concurrency slot
        go_btn.click(arena, arena_inputs, arena_outputs, api_name="arena", concurrency_id="arena")
        free_text.submit(arena, arena_inputs, arena_outputs, api_name="arena_submit", concurrency_id="arena")
        diff_btn.click(diff_fn, [run_dd, harness_a, harness_b], [diff_code, diff_view], api_name="diff")
        lineage_btn.click(lineage_fn, [run_dd, cycle_dd], lineage_code, api_name="lineage")
        curves_btn.click(curves_fn, run_dd, [plot_reward, plot_kl], api_name="curves")

        views = [session_status, edit_target, session_lineage, session_log]
        start_btn.click(session_start, config_box, [session_msg, session_status, edit_target, edit_component, edit_text,
                                                    session_lineage, session_log], api_name="session_start")
        fast_btn.click(session_fast, None, [session_msg, *views], api_name="session_fast")
        slow_btn.click(session_slow, slow_n, [session_msg, *views], api_name="session_slow")
        run_btn.click(session_run, run_cycles, [session_msg, session_status], api_name="session_run")
        pause_btn.click(session_pause, None, [session_msg, session_status], api_name="session_pause")
        resume_btn.click(session_resume, None, [session_msg, session_status], api_name="session_resume")
        stop_btn.click(session_stop, None, [session_msg, session_status], api_name="session_stop")
        edit_target.input(session_components, edit_target, [edit_component, edit_text], api_name="session_components")
        edit_component.input(session_component_text, [edit_target, edit_component], edit_text,
                             api_name="session_component")
        edit_btn.click(session_edit, [edit_target, edit_component, edit_text, edit_note], [session_msg, *views],
                       api_name="session_edit")
        timer.tick(session_poll, None, [session_status, session_lineage, session_log], api_name="session_poll",
                   show_progress="hidden")
        demo.load(select_run, run_dd, select_outputs, api_name="initial_view")
    demo.fst = {"catalog": catalog, "policies": policies, "steering": steering}  # for tests and notebooks
    return demo


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="fst_lab app: harness arena, evolution views, run steering")
    p.add_argument("--runs-root", default="runs", help="directory holding run directories (the app reads nothing "
                                                       "outside it)")
    p.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    p.add_argument("--harness-dir", default=None, help="harness files for the arena (default: harnesses/)")
    args = p.parse_args(argv)
    Path(args.runs_root).mkdir(parents=True, exist_ok=True)
    demo = build_app(args.runs_root, harness_dir=args.harness_dir)
    demo.queue().launch(server_name=HOST, server_port=args.port, show_error=True)


if __name__ == "__main__":
    main()
