"""The Train tab: start a Session from a YAML config, step it fast / slow, run cycles in the
background, pause / resume / stop, and hand-edit a harness of the live population.

Work runs on :class:`fst_lab.runner.Runner` — the same runner the notebook dashboard uses — so the
tab shows the *session's* state (busy, paused, what it is doing) and progress by phase (rollouts
i/N, GEPA metric calls i/budget with proposals accepted, RL step i/n with reward), updating while
the work runs. Buttons are enabled only when they can act: no step without a session, no second
step while one runs. Starting a session selects its run in the run picker, so the other tabs follow
the live run.

    >>> st = Steering("runs", policy_factory=lambda name: tiny_policy())
    >>> st.start(TINY_CONFIG); st.fast(); st.slow(2)      # each returns a one-line message
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import yaml

from fst_lab import yamltext
from fst_lab.app import catalog as C
from fst_lab.errors import FstLabError
from fst_lab.harness import Harness, HarnessError
from fst_lab.runner import Runner
from fst_lab.runs import safe_run_path
from fst_lab.ui import plots, render

TINY_CONFIG = """\
# A tiny FST run: one GEPA round and one RL step per cycle, small enough for 2 CPU cores
# (about a minute per cycle with the embedded SmolLM2-135M).
# Keys: see FSTConfig (fst_lab/config.py) and docs/CONFIG.md.
# API keys don't belong here: name an environment variable instead, e.g.
#   fast: {reflection_lm: openai/gpt-4.1-mini, api_key_env: OPENAI_API_KEY}
mode: fst
task: math
level: 1
cycles: 1
steps_per_cycle: 1
population_size: 2
num_generations: 2
prompts_per_step: 1
fast_train_size: 2
fast_val_size: 2
eval_size: 2
eval_every_cycle: false
max_new_tokens: 32
fast:
  max_metric_calls: 6
  reflection_max_tokens: 128
  reflection_minibatch_size: 1
run_name: app-run
"""


class Steering:
    """The Train tab's one live Session, driven through a :class:`Runner`.

    Every action returns a short message (errors included, never raised), so the browser and the API
    get the same answer. ``fast()``/``slow()`` wait for their step (``wait=False`` returns at once;
    the tab polls ``runner.state()`` meanwhile); ``run()`` works in the background.
    """

    def __init__(self, runs_root: str | Path, policy_factory: Callable[[str], Any] | None = None):
        from fst_lab.app.weights import _default_factory

        self.runs_root = Path(runs_root).resolve()
        self.factory = policy_factory or _default_factory
        self.runner = Runner(name="fst-app-runner")
        self.runner.subscribe(self._on_record)
        self.log: deque[str] = deque(maxlen=200)
        self.result = ""  # the message of the last finished step

    @property
    def session(self):
        return self.runner.session

    @property
    def busy(self) -> bool:
        return self.runner.busy

    # ---------------------------------------------------------------- lifecycle
    def start(self, config_text: str) -> str:
        from fst_lab.config import FSTConfig
        from fst_lab.models import check_model
        from fst_lab.session import Session

        if self.busy:
            return "⚠️ a session is working: stop it before starting another one"
        try:
            d = yamltext.safe_load(config_text or "") or {}
        except yaml.YAMLError as e:  # one line, like every other error here
            mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None) or type(e).__name__
            return f"❌ config:{mark.line + 1}: invalid YAML: {problem}" if mark else f"❌ config: invalid YAML: {problem}"
        if not isinstance(d, dict):
            return "❌ config must be a YAML mapping"
        secrets = C.secret_fields(d)
        if secrets:
            return (f"❌ refused: the config carries secret-looking fields {secrets}; the app never stores keys. "
                    "Set them as environment variables (e.g. OPENAI_API_KEY) instead.")
        name = d.get("run_name")
        if name is not None:
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name) or name.startswith("."):
                return f"❌ refused: run_name {name!r} must be a plain directory name (letters, digits, . _ -)"
        d.pop("runs_root", None)
        d["runs_root"] = str(self.runs_root)  # sessions started here always land inside the runs root
        try:
            cfg = FSTConfig.from_dict(d, source="config")
            if cfg.run_name:
                safe_run_path(cfg.run_name, self.runs_root)
            check_model(cfg.model)  # a missing model is one line here, before any run directory exists
            s = Session(cfg, policy=self.factory(cfg.model), progress=False)
        except (FstLabError, ValueError) as e:  # every fst_lab error (config, model, harness, run dir...)
            return f"❌ {e}"
        old = self.session
        self.runner.attach(s)
        if old is not None:
            try:
                old.close()
            except Exception:  # closing the old one is best effort
                pass
        self.log.clear()
        self.result = ""
        return f"✅ session started: `{self.run_name()}` (mode {cfg.mode}, task {cfg.task})"

    def run_name(self) -> str | None:
        """The live session's run directory, relative to the runs root (the run picker's value)."""
        if self.session is None:
            return None
        return str(Path(self.session.run_dir).resolve().relative_to(self.runs_root))

    def _on_record(self, rec: dict) -> None:
        if rec.get("event") in ("progress", "runner"):
            return
        rec = C.redact(rec)
        rec.pop("diff", None)  # long; the lineage view shows edits
        self.log.append(json.dumps(rec, default=str, ensure_ascii=False)[:400])

    def _need(self) -> str | None:
        if self.session is None:
            return "⚠️ no session: start one from a config first"
        if self.busy:
            return f"⚠️ busy ({self.runner.activity or 'working'}): wait, pause or stop it first"
        return None

    def _go(self, label: str, work, done: Callable[[Any, float], str], wait: bool) -> str:
        if (msg := self._need()):
            return msg
        t0 = time.time()
        self.result = ""

        def on_done(res):
            self.result = done(res, time.time() - t0)

        if not self.runner.start(label, work, on_done=on_done):
            return f"⚠️ {self.runner.message}"
        if not wait:
            return f"⏳ {label}…"
        self.runner.wait()
        return self.outcome()

    def outcome(self) -> str:
        """The finished step's message (or its error)."""
        if self.runner.last_error:
            return f"❌ {self.runner.last_error}"
        return self.result

    # ---------------------------------------------------------------- steps
    def fast(self, wait: bool = True) -> str:
        def done(res, secs):
            s = self.session
            return (f"✅ fast step (GEPA round {s.counters['fast_round']}) in {secs:.1f}s: "
                    f"{getattr(res, 'accepted', '?')} proposal(s) accepted · population "
                    f"{[h.id for h in s.population]} · best {getattr(res, 'best_id', None)}")

        return self._go("fast step", lambda s: s.fast_step(), done, wait)

    def slow(self, n: int = 1, wait: bool = True) -> str:
        n = max(1, int(n or 1))

        def done(recs, secs):
            last = recs[-1] if recs else {}
            rw = last.get("reward")
            return (f"✅ {len(recs)} slow step(s) in {secs:.1f}s: RL step {self.session.counters['rl_step']}"
                    + (f", train reward {rw:.3f}" if isinstance(rw, (int, float)) else ""))

        return self._go(f"{n} slow step(s)", lambda s: s.slow_step(n), done, wait)

    def run(self, cycles: int | None = None) -> str:
        msg = self._go("run cycles", lambda s: s.run(int(cycles) if cycles else None),
                       lambda res, secs: f"✅ ran {cycles or 'the remaining'} cycle(s) in {secs:.1f}s", wait=False)
        if msg.startswith("⏳"):
            return (f"▶️ running {cycles or 'the remaining'} cycle(s) in the background "
                    "(pause / stop at any step boundary)")
        return msg

    def pause(self) -> str:
        return "⚠️ no session" if self.session is None else f"⏸️ {self.runner.pause()}"

    def resume(self) -> str:
        return "⚠️ no session" if self.session is None else f"▶️ {self.runner.resume()}"

    def stop(self) -> str:
        return "⚠️ no session" if self.session is None else f"⏹️ {self.runner.stop()}"

    # ---------------------------------------------------------------- hand edits
    def population_choices(self) -> list[tuple[str, str]]:
        if self.session is None:
            return []
        return [(f"{i}: {h.name}@{h.id} ({render.ORIGIN_MARK.get(h.lineage.origin, h.lineage.origin)})", h.id)
                for i, h in enumerate(self.session.population)]

    def components(self, target: str | None) -> list[str]:
        h = self._member(target)
        return h.components() if h is not None else []

    def component_text(self, target: str | None, component: str | None) -> str:
        h = self._member(target)
        if h is None or not component:
            return ""
        try:
            return h.component(component)
        except HarnessError as e:
            return f"# {e}"

    def _member(self, target: str | None) -> Harness | None:
        if self.session is None:
            return None
        for h in self.session.population:
            if h.id == target:
                return h
        return self.session.population[0] if self.session.population and not target else None

    def edit(self, target: str | None, component: str, text: str, note: str = "") -> str:
        if self.session is None:
            return "⚠️ no session: start one first"
        if not component:
            return "⚠️ pick a component to edit"
        try:
            new = self.session.edit_harness(target or None, {component: text}, note=note or "edited in the app")
        except (HarnessError, KeyError, IndexError, ValueError) as e:
            return f"❌ edit refused: {e}"
        return (f"✍️ manual edit recorded: {new.name}@{new.id} (parent {new.lineage.parents[0]}), "
                "used from the next step")

    # ---------------------------------------------------------------- views
    def status(self) -> dict:
        if self.session is None:
            return {"session": None, "hint": "start a session from the config"}
        st = C.redact(self.session.status())
        st["run_dir"] = self.run_name()
        state = self.runner.state()
        st["background_run"] = "running" if state["busy"] else "idle"
        st["progress"] = state["progress"]
        if state["error"]:
            st["last_error"] = state["error"]
        return st

    def state_line(self) -> str:
        return render.state_line(self.runner.state())

    def lineage_text(self) -> str:
        if self.session is None:
            return "(no session)"
        s = self.session
        pop = [h.id for h in s.population]
        return render.lineage_tree(s.lineage(), population=pop, scores=s.population_scores,
                                   best=render.best_scored(pop, s.population_scores), mode=s.config.mode)

    def log_text(self) -> str:
        return "\n".join(self.log)

    def figures(self):
        return plots.curve_figures(list(self.session.metrics) if self.session is not None else [])


# ============================================================================ the tab
def build_tab(app, header) -> dict:
    """Lay out the Train tab and wire its events (each with an api_name)."""
    import gradio as gr

    steering: Steering = app.steering
    gr.Markdown("Start a Session (it writes a run directory under the runs root and becomes the selected run), "
                "step it, or run cycles in the background. Same runner as the notebook dashboard.")
    with gr.Row():
        config_box = gr.Code(value=TINY_CONFIG, language="yaml", label="config (FSTConfig YAML)", interactive=True,
                             lines=24, max_lines=60, wrap_lines=True)
        with gr.Column():
            start_btn = gr.Button("Start session", variant="primary")
            with gr.Row():
                fast_btn = gr.Button("Fast step (GEPA)", interactive=False, elem_id="fast-btn")
                slow_n = gr.Number(value=1, precision=0, minimum=1, label="RL steps", min_width=80)
                slow_btn = gr.Button("Slow step(s) (RL)", interactive=False, elem_id="slow-btn")
            with gr.Row():
                run_cycles = gr.Number(value=1, precision=0, minimum=1, label="cycles", min_width=80)
                run_btn = gr.Button("Run cycles ▶", interactive=False, elem_id="run-btn")
                pause_btn = gr.Button("Pause ⏸", interactive=False, elem_id="pause-btn")
                resume_btn = gr.Button("Resume", interactive=False, elem_id="resume-btn")
                stop_btn = gr.Button("Stop ⏹", variant="secondary", interactive=False, elem_id="stop-btn")
            progress_md = gr.Markdown(steering.state_line(), elem_id="train-progress")
            session_msg = gr.Markdown(elem_id="train-message")
            with gr.Accordion("session status (JSON)", open=False):
                session_status = gr.JSON(label="status")
    with gr.Row():
        live_reward = gr.Plot(label="live: reward vs samples")
        live_kl = gr.Plot(label="live: KL vs reward")
    with gr.Accordion("edit a harness of the live population (recorded as a manual edit)", open=False):
        with gr.Row():
            edit_target = gr.Dropdown(label="harness", choices=[], allow_custom_value=True, scale=2)
            edit_component = gr.Dropdown(label="component", choices=[], allow_custom_value=True, scale=1)
            edit_note = gr.Textbox(label="note", placeholder="why this edit", scale=1)
        edit_text = gr.Textbox(label="component text", lines=6)
        edit_btn = gr.Button("Apply edit", interactive=False)
    with gr.Row():
        session_lineage = gr.Code(label="live lineage", language=None, show_line_numbers=False, wrap_lines=True,
                                  elem_id="live-lineage")
        session_log = gr.Code(label="events & metrics (JSONL)", language=None, show_line_numbers=False,
                              wrap_lines=True, max_lines=30)
    timer = gr.Timer(1.0)
    seen = {"changes": -1}

    def buttons():
        """Interactivity of the step buttons from the runner's state: only what can act is enabled."""
        st = steering.runner.state()
        has, busy, paused = st["session"], st["busy"], st["paused"]
        mode = steering.session.config.mode if has else None
        idle = has and not busy
        return [gr.Button(interactive=idle and mode != "rl"), gr.Button(interactive=idle and mode != "gepa"),
                gr.Button(interactive=idle), gr.Button(interactive=has and busy and not paused),
                gr.Button(interactive=has and paused),
                # red only while there is something to stop (a disabled red button still looks armed)
                gr.Button(interactive=has and busy, variant="stop" if has and busy else "secondary"),
                gr.Button(interactive=has)]

    button_outs = [fast_btn, slow_btn, run_btn, pause_btn, resume_btn, stop_btn, edit_btn]

    def views():
        targets = steering.population_choices()
        return (steering.status(), gr.Dropdown(choices=targets, value=targets[0][1] if targets else None),
                steering.lineage_text(), steering.log_text())

    def live_plots(force: bool = False):
        if not force and steering.runner.changes == seen["changes"]:
            return gr.skip(), gr.skip()
        seen["changes"] = steering.runner.changes
        return steering.figures()

    def session_start(config_text):
        msg = steering.start(config_text)
        st, targets, lin, log_text = views()
        first = targets.value if hasattr(targets, "value") else None
        comps = steering.components(first)
        comp = comps[0] if comps else None
        name = steering.run_name()
        run_pick = (gr.Dropdown(choices=app.run_choices(), value=name) if name and msg.startswith("✅")
                    else gr.skip())
        return (msg, st, targets, gr.Dropdown(choices=comps, value=comp), steering.component_text(first, comp),
                lin, log_text, steering.state_line(), run_pick, *live_plots(force=True), *buttons())

    def stepping(begin):
        """A generator handler: start the step, stream its progress line, end with its result."""
        msg = begin()
        if not msg.startswith("⏳"):
            yield (msg, *views(), steering.state_line(), *buttons())
            return
        last = None
        while steering.runner.working:
            line = steering.state_line()
            if line != last:
                last = line
                yield (msg, *[gr.skip()] * 4, line, *buttons())
            time.sleep(0.1)
        yield (steering.outcome(), *views(), steering.state_line(), *buttons())

    def session_fast():
        yield from stepping(lambda: steering.fast(wait=False))

    def session_slow(n):
        yield from stepping(lambda: steering.slow(max(1, int(n or 1)), wait=False))

    def session_run(cycles):
        return steering.run(int(cycles) if cycles else None), steering.status()

    def session_pause():
        return steering.pause(), steering.status()

    def session_resume():
        return steering.resume(), steering.status()

    def session_stop():
        return steering.stop(), steering.status()

    def session_poll(run_name=None):
        changed = steering.runner.changes != seen["changes"]
        summary = gr.skip()
        if changed and run_name and run_name == steering.run_name():  # the picker shows the live run: follow it
            run, msg = app.open(run_name)
            summary = msg or render.run_summary(run)
        return (steering.status(), steering.lineage_text(), steering.log_text(), steering.state_line(),
                *live_plots(), *buttons(), summary)

    def session_components(target):
        comps = steering.components(target)
        first = comps[0] if comps else None
        return gr.Dropdown(choices=comps, value=first), steering.component_text(target, first)

    def session_edit(target, component, text, note):
        return (steering.edit(target, component, text, note), *views())

    view_outs = [session_status, edit_target, session_lineage, session_log]
    step_outs = [session_msg, *view_outs, progress_md, *button_outs]
    start_btn.click(session_start, config_box,
                    [session_msg, session_status, edit_target, edit_component, edit_text, session_lineage,
                     session_log, progress_md, header.run_dd, live_reward, live_kl, *button_outs],
                    api_name="session_start")
    fast_btn.click(session_fast, None, step_outs, api_name="session_fast", show_progress="hidden")
    slow_btn.click(session_slow, slow_n, step_outs, api_name="session_slow", show_progress="hidden")
    run_btn.click(session_run, run_cycles, [session_msg, session_status], api_name="session_run")
    pause_btn.click(session_pause, None, [session_msg, session_status], api_name="session_pause")
    resume_btn.click(session_resume, None, [session_msg, session_status], api_name="session_resume")
    stop_btn.click(session_stop, None, [session_msg, session_status], api_name="session_stop")
    edit_target.input(session_components, edit_target, [edit_component, edit_text], api_name="session_components")
    edit_component.input(steering.component_text, [edit_target, edit_component], edit_text,
                         api_name="session_component")
    edit_btn.click(session_edit, [edit_target, edit_component, edit_text, edit_note], [session_msg, *view_outs],
                   api_name="session_edit")
    timer.tick(session_poll, header.run_dd, [session_status, session_lineage, session_log, progress_md, live_reward,
                                             live_kl, *button_outs, header.run_status],
               api_name="session_poll", show_progress="hidden")
    return {}
