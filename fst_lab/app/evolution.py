"""The Evolution tab: the line diff of the two selected harnesses (with a header naming them), the
population's lineage tree, reward vs samples and KL vs reward, and the run's config (redacted).

Every view follows the run picker: choosing a run, a cycle or a harness redraws the diff, so its
header always names the pair that is selected. Plots come from :mod:`fst_lab.ui.plots`, the same
code the dashboard and ``fst-lab compare`` use.
"""

from __future__ import annotations

from fst_lab.app import catalog as C
from fst_lab.harness import HarnessError
from fst_lab.runs import RunDirError
from fst_lab.ui import plots, render


def diff_views(app, run, ref_a: str | None, ref_b: str | None) -> tuple[str, str]:
    """(raw unified diff, coloured HTML under a header naming A and B)."""
    try:
        ha, hb = app.catalog.resolve_harness(ref_a, run), app.catalog.resolve_harness(ref_b, run)
    except (RunDirError, HarnessError) as e:
        return f"# {e}", f"<p>❌ {render.esc(e)}</p>"
    d = ha.diff(hb)
    header = f"A: {ha.name}@{ha.id} ({ha.lineage.origin})  →  B: {hb.name}@{hb.id} ({hb.lineage.origin})"
    return d or "# identical (lineage aside)", render.diff_html(d, header)


def lineage_text(run, cycle) -> str:
    if run is None:
        return "(lineage needs a run)"
    try:
        rec = run.population_record(C.parse_cycle(cycle))
    except RunDirError as e:
        return f"❌ {e}"
    pop = [m["id"] for m in rec.get("members", [])]
    scores = rec.get("scores", {}) or {}
    return render.lineage_tree(run.lineage_edges(), population=pop, scores=scores,
                               best=render.best_scored(pop, scores), mode=(run.config or {}).get("mode"))


def curves(run):
    return plots.curve_figures(run.metrics if run is not None else [])


def build_tab(app, header) -> dict:
    """Lay out the tab and wire its events; returns the components the run picker updates."""
    import gradio as gr

    diff_view = gr.HTML(label="diff", elem_id="diff-view")
    with gr.Accordion("raw unified diff", open=False):
        diff_code = gr.Code(label="unified diff", language=None, show_line_numbers=False)
    lineage_code = gr.Code(label="lineage (● in population, ★ best)", language=None, show_line_numbers=False)
    with gr.Row():
        plot_reward = gr.Plot(label="reward vs samples")
        plot_kl = gr.Plot(label="KL vs reward")
    with gr.Row():
        diff_btn = gr.Button("↻ diff", size="sm")
        lineage_btn = gr.Button("↻ lineage", size="sm")
        curves_btn = gr.Button("↻ curves", size="sm")
    with gr.Accordion("run config (secrets redacted)", open=False):
        config_code = gr.Code(language="yaml", show_line_numbers=False, lines=30, max_lines=200,
                              wrap_lines=True)

    def diff_fn(run_name, ref_a, ref_b):
        run, msg = app.open(run_name)
        if msg:
            return f"# {msg}", f"<p>{render.esc(msg)}</p>"
        return diff_views(app, run, ref_a, ref_b)

    def lineage_fn(run_name, cycle):
        run, msg = app.open(run_name)
        return msg or lineage_text(run, cycle)

    def curves_fn(run_name):
        return curves(app.open(run_name)[0])

    pair = [header.run_dd, header.harness_a, header.harness_b]
    header.harness_a.input(diff_fn, pair, [diff_code, diff_view], api_name="pick_harness_a")
    header.harness_b.input(diff_fn, pair, [diff_code, diff_view], api_name="pick_harness_b")
    diff_btn.click(diff_fn, pair, [diff_code, diff_view], api_name="diff")
    lineage_btn.click(lineage_fn, [header.run_dd, header.cycle_dd], lineage_code, api_name="lineage")
    curves_btn.click(curves_fn, header.run_dd, [plot_reward, plot_kl], api_name="curves")
    return {"diff_code": diff_code, "diff_view": diff_view, "lineage": lineage_code, "plot_reward": plot_reward,
            "plot_kl": plot_kl, "config": config_code}
