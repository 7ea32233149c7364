"""The app's page: the run picker and harness pair above three tabs (Arena, Evolution, Train).

The picker opens on the newest run with its one-line result (validation start → end, the 2x2
ablation); choosing a run or a cycle updates every tab (diff, lineage, plots, the arena's task; a run
also sets the weights to the ones its harnesses last evolved with, and the arena's new tokens per turn to the
run's), and
starting a session in the Train tab selects its run. Every event has an ``api_name``, so
``gradio_client`` can drive everything the browser can.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fst_lab.app import arena, evolution, train
from fst_lab.app import catalog as C
from fst_lab.app.weights import PolicyCache, default_weights
from fst_lab.runs import RunDirError
from fst_lab.ui import render

NO_RUN = "(no run: harness files only)"


class App:
    """What the tabs share: the catalog (what may be read), the policies, the live session's steering."""

    def __init__(self, runs_root, policy_factory=None, harness_dir=None):
        self.catalog = C.Catalog(runs_root, harness_dir)
        self.policies = PolicyCache(policy_factory)
        self.steering = train.Steering(self.catalog.runs_root, policy_factory)

    def open(self, run_name: str | None):
        """(RunView or None, message). A refused or unreadable run is a message, never an exception."""
        if not run_name:
            return None, ""
        try:
            return self.catalog.open_run(run_name), ""
        except RunDirError as e:
            return None, f"❌ {e}"

    def spec(self, run, task_name: str | None, harness=None) -> C.TaskSpec:
        spec = C.task_spec_for(run, harness)
        if task_name and task_name != spec.name:
            return C.TaskSpec(task_name)
        return spec

    def run_choices(self) -> list:
        return [(NO_RUN, "")] + self.catalog.run_names()

    def resolve(self, ref, run):
        try:
            return self.catalog.resolve_harness(ref, run) if ref else None
        except (RunDirError, C.HarnessError):
            return None


@dataclass
class Header:
    run_dd: Any
    cycle_dd: Any
    harness_a: Any
    harness_b: Any
    weights: Any
    run_status: Any


def build_app(runs_root: str | Path = "runs", *, policy_factory: Callable[[str], Any] | None = None,
              harness_dir: str | Path | None = None):
    """The whole app as a ``gr.Blocks`` (not launched).

    ``policy_factory(model_name) -> Policy`` builds the policy (default: ``fst_lab.models.load_policy``,
    cached per model name); tests pass ``lambda name: tiny_policy()`` to stay fast.
    """
    import gradio as gr

    app = App(runs_root, policy_factory, harness_dir)
    catalog = app.catalog
    names = catalog.run_names()
    newest = names[0] if names else ""

    def no_run_status():
        return (f"No run selected: the arena compares harness files from `{catalog.harness_dir.name}/` "
                f"with the base model. Runs are read from `{catalog.runs_root}`.")

    def select_run(run_name):
        run, msg = app.open(run_name)
        status = msg or (render.run_summary(run) if run is not None else no_run_status())
        choices, a, b = catalog.harness_choices(run, None)
        diff_code, diff_view = evolution.diff_views(app, run, a, b)
        fig1, fig2 = evolution.curves(run)
        harness_a = app.resolve(a, run)
        return (status, gr.Dropdown(choices=C.cycle_choices(run), value="latest"),
                gr.Dropdown(choices=choices, value=a), gr.Dropdown(choices=choices, value=b),
                *arena.for_run(app, run, harness_a), C.config_yaml(run) if run is not None else "",
                diff_code, diff_view, evolution.lineage_text(run, None), fig1, fig2,
                gr.Radio(value=default_weights(run)), gr.Slider(value=arena.run_max_new_tokens(run, harness_a)))

    def select_cycle(run_name, cycle):
        run, msg = app.open(run_name)
        try:
            choices, a, b = catalog.harness_choices(run, cycle)
        except RunDirError as e:
            return gr.Dropdown(), gr.Dropdown(), f"❌ {e}", gr.Code(), gr.Code(), gr.HTML()
        status = msg or (render.run_summary(run) + f"\n\nshowing cycle **{cycle or 'latest'}**" if run else "")
        diff_code, diff_view = evolution.diff_views(app, run, a, b)
        return (gr.Dropdown(choices=choices, value=a), gr.Dropdown(choices=choices, value=b), status,
                evolution.lineage_text(run, cycle), diff_code, diff_view)

    def list_runs_fn():
        return gr.Dropdown(choices=app.run_choices())

    with gr.Blocks(title="fst_lab · Learning, Fast and Slow") as demo:
        gr.Markdown("## fst_lab · Learning, Fast and Slow\nFast weights = the **harness** (evolved by GEPA) · "
                    "slow weights = the **policy** (trained by RL). Pick a run, compare harnesses, train a session.")
        with gr.Row():
            run_dd = gr.Dropdown(label="Run (a run directory)", choices=app.run_choices(), value=newest,
                                 allow_custom_value=True, scale=4, elem_id="run-picker")
            cycle_dd = gr.Dropdown(label="Cycle (population snapshot)", choices=["latest"], value="latest",
                                   allow_custom_value=True, scale=1)
            refresh_btn = gr.Button("↻ runs", scale=0, min_width=80)
        run_status = gr.Markdown(elem_id="run-status")
        choices0, a0, b0 = catalog.harness_choices(None)
        with gr.Row():
            harness_a = gr.Dropdown(label="Harness A", choices=choices0, value=a0, allow_custom_value=True, scale=3)
            harness_b = gr.Dropdown(label="Harness B", choices=choices0, value=b0, allow_custom_value=True, scale=3)
            weights = gr.Radio(["base", "trained", "consolidated"], value="base", label="Weights", scale=2, min_width=340,
                               info="trained: RL · consolidated: harness distilled in")
        header = Header(run_dd, cycle_dd, harness_a, harness_b, weights, run_status)
        with gr.Tabs():
            with gr.Tab("Arena"):
                ar = arena.build_tab(app, header)
            with gr.Tab("Evolution"):
                ev = evolution.build_tab(app, header)
            with gr.Tab("Train"):
                train.build_tab(app, header)

        select_outputs = [run_status, cycle_dd, harness_a, harness_b, ar["task"], ar["example"], ev["config"],
                          ev["diff_code"], ev["diff_view"], ev["lineage"], ev["plot_reward"], ev["plot_kl"], weights,
                          ar["max_tokens"]]
        refresh_btn.click(list_runs_fn, None, run_dd, api_name="list_runs")
        run_dd.change(select_run, run_dd, select_outputs, api_name="select_run")
        cycle_dd.input(select_cycle, [run_dd, cycle_dd],
                       [harness_a, harness_b, run_status, ev["lineage"], ev["diff_code"], ev["diff_view"]],
                       api_name="select_cycle")
        demo.load(select_run, run_dd, select_outputs, api_name="initial_view")
    demo.fst = {"catalog": catalog, "policies": app.policies, "steering": app.steering, "app": app}
    return demo
