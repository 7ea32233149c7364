"""The Arena tab: one input goes to two harnesses; both answers stream in, tool calls as collapsible
messages, then each answer's score and the task's feedback.

The agent loop is :func:`fst_lab.rollout.rollout_pairs`, the one training uses; :func:`stream_arena`
runs it on a worker thread and yields the two chats as they grow (token by token with an HF policy).
Free text typed in the box always wins over a selected task example (it is answered unscored).

    >>> for up in stream_arena(policy, [(ha, ex), (hb, ex)], task):
    ...     show(up.chats)                      # up.done: up.trajectories are scored
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from fst_lab.app import catalog as C
from fst_lab.harness import Harness, HarnessError
from fst_lab.runs import RunDirError

log = logging.getLogger(__name__)


# ============================================================================ chat rendering
_TOOL_TAG = re.compile(r"<tool_call>.*?(?:</tool_call>|$)", re.DOTALL)


def _esc(text: str) -> str:
    """Model text shown as text: tags like <tool_response> must not become HTML."""
    return html.escape(text or "", quote=False)


def _call_title(name: str, args: Any) -> str:
    if isinstance(args, dict):
        inner = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items())
    else:
        inner = json.dumps(args, ensure_ascii=False) if args is not None else ""
    if len(inner) > 80:
        inner = inner[:77] + "..."
    return f"🔧 {name}({inner})"


def harness_header(h: Harness) -> dict:
    """A collapsed message saying which harness this pane runs (its system prompt inside)."""
    n_shots = len(h.few_shot)
    tools = ", ".join(h.tool_names) or "none"
    body = (h.system_prompt or "(no system prompt)").strip()
    return {"role": "assistant", "content": _esc(body),
            "metadata": {"title": f"🧩 {h.name}@{h.id} · {n_shots} few-shot · tools: {tools}", "status": "done"}}


def chat_messages(messages: Sequence[dict], n_prompt: int, harness: Harness | None = None) -> list[dict]:
    """Trajectory messages -> Gradio chat messages.

    The user turn is the rendered task template (what the model saw); assistant text is shown as is;
    every tool call becomes a collapsible message titled ``🔧 name(args)`` holding its observation;
    a malformed call becomes ``⚠️ malformed tool call`` with the error the model was shown.
    """
    out: list[dict] = [harness_header(harness)] if harness is not None else []
    if n_prompt and messages[n_prompt - 1].get("role") == "user":
        out.append({"role": "user", "content": _esc(messages[n_prompt - 1].get("content", ""))})
    gen = list(messages[n_prompt:])
    used: set[int] = set()
    for i, m in enumerate(gen):
        role = m.get("role")
        if role == "assistant":
            calls = m.get("tool_calls") or []
            text = m.get("content") or ""
            if calls:
                text = _TOOL_TAG.sub("", text)
            if text.strip():
                out.append({"role": "assistant", "content": _esc(text.strip())})
            elif not calls:
                out.append({"role": "assistant", "content": "*(empty response)*"})
            for c in calls:
                fn = c.get("function", {})
                obs = ""
                for j in range(i + 1, len(gen)):
                    t = gen[j]
                    if t.get("role") != "tool":
                        break
                    if j not in used and (t.get("tool_call_id") == c.get("id") or not c.get("id")):
                        obs = t.get("content", "")
                        used.add(j)
                        break
                out.append({"role": "assistant", "content": _esc(obs) or "(no observation)",
                            "metadata": {"title": _call_title(fn.get("name", "?"), fn.get("arguments")),
                                         "status": "done"}})
        elif role == "tool":
            if i in used:
                continue
            title = "⚠️ malformed tool call" if m.get("name") == "error" else _call_title(m.get("name", "?"), None)
            out.append({"role": "assistant", "content": _esc(m.get("content", "")),
                        "metadata": {"title": title, "status": "done"}})
        elif role == "user":
            out.append({"role": "user", "content": _esc(m.get("content", ""))})
    return out


def score_markdown(traj, scored: bool = True) -> str:
    if traj is None:
        return ""
    if getattr(traj, "error", None) and str(traj.error).startswith("rollout"):
        return f"**error**: {_esc(str(traj.error))}"
    calls = len(getattr(traj, "tool_calls", []) or [])
    meta = f"{traj.n_turns} turn(s) · {calls} tool call(s) · {traj.completion_tokens} tokens" + \
        (" · truncated" if traj.truncated else "")
    if not scored:
        return f"**not scored** (free text) · {meta}\n\n{_esc(traj.feedback)}"
    mark = "✅" if traj.reward >= 1.0 else ("🟡" if traj.reward > 0 else "❌")
    return f"**score {traj.reward:.2f}** {mark} · {meta}\n\n**feedback:** {_esc(traj.feedback)}"


# ============================================================================ arena (streaming rollouts)
class _Cancelled(Exception):
    pass


class _SideStreamer:
    """A transformers streamer for a batch: decodes each row's new tokens and reports (side, text)."""

    def __init__(self, tokenizer, sides: list[int], emit: Callable[[int, str], None], cancel: threading.Event):
        self.tok, self.sides, self.emit, self.cancel = tokenizer, sides, emit, cancel
        self.ids: list[list[int]] = [[] for _ in sides]
        self.done = [False] * len(sides)
        self._prompt_seen = False
        self._last = 0.0

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt ids
            self._prompt_seen = True
            return
        rows = value.reshape(len(self.sides), -1).tolist() if value.numel() >= len(self.sides) else []
        eos = self.tok.eos_token_id
        for r, toks in enumerate(rows):
            if self.done[r]:
                continue
            for t in toks:
                if t == eos:
                    self.done[r] = True
                    break
                self.ids[r].append(t)
        now = time.time()
        if now - self._last > 0.05:  # decoding every token of every row is wasteful; 20 updates/s is plenty
            self._last = now
            self._flush()

    def end(self) -> None:
        self._flush()

    def _flush(self) -> None:
        for r, side in enumerate(self.sides):
            self.emit(side, self.tok.decode(self.ids[r], skip_special_tokens=True))


def _cancel_criteria(cancel: threading.Event):
    """A stopping criterion that ends generation when the arena is abandoned (client gone)."""
    import torch
    from transformers import StoppingCriteria

    class _Cancel(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

    return _Cancel()


class _StreamingModel:
    """Wraps a model so every ``generate`` streams through our streamer (everything else delegates)."""

    def __init__(self, model, streamer_factory: Callable[[], Any], cancel: threading.Event):
        self._model, self._factory, self._cancel = model, streamer_factory, cancel

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):  # a forward pass (e.g. a prefix) is not generation: no streaming
        return self._model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        from transformers import StoppingCriteriaList

        crit = kwargs.pop("stopping_criteria", None) or StoppingCriteriaList()
        crit.append(_cancel_criteria(self._cancel))
        return self._model.generate(*args, streamer=self._factory(), stopping_criteria=crit, **kwargs)


class _TapPolicy:
    """A policy proxy for :func:`rollout_pairs` that reports progress per side without changing results.

    ``chat_prompt`` sees each conversation (its list object is the trajectory's own), so it reports the
    messages so far (incl. the last tool observations); ``generate_text`` streams tokens when the
    policy is a :class:`fst_lab.models.Policy` (via a streamer on ``model.generate``), and reports
    whole texts otherwise.
    """

    def __init__(self, policy, events: "queue.Queue", cancel: threading.Event):
        self.inner, self.events, self.cancel = policy, events, cancel
        self._side_of: dict[int, int] = {}
        self._pending: list[int] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def chat_prompt(self, messages, tools=None):
        if self.cancel.is_set():
            raise _Cancelled()
        key = id(messages)
        if key not in self._side_of:  # the first turn renders sides in pair order
            self._side_of[key] = len(self._side_of)
        side = self._side_of[key]
        self._pending.append(side)
        self.events.put(("messages", side, [dict(m) for m in messages]))
        return self.inner.chat_prompt(messages, tools)

    def generate_text(self, prompts, **kw):
        sides, self._pending = self._pending[-len(prompts):], []
        from fst_lab.models import Policy

        model = getattr(self.inner, "model", None)
        if isinstance(self.inner, Policy) and hasattr(model, "generate"):
            emit = lambda side, text: self.events.put(("text", side, text))  # noqa: E731
            factory = lambda: _SideStreamer(self.inner.tokenizer, sides, emit, self.cancel)  # noqa: E731
            # one plain generate() per turn, so the streamer sees every token (no shared-prefix cache path)
            streaming = dataclasses.replace(self.inner, model=_StreamingModel(model, factory, self.cancel),
                                            prefix_cache=False)
            gens = streaming.generate_text(prompts, **kw)
        else:
            gens = self.inner.generate_text(prompts, **kw)
        for side, g in zip(sides, gens):
            self.events.put(("text", side, g.text))
        if self.cancel.is_set():
            raise _Cancelled()
        return gens


@dataclass
class ArenaUpdate:
    """One frame of the arena: a chat per side; when ``done``, the scored trajectories too."""

    chats: list[list[dict]]
    done: bool = False
    trajectories: list = field(default_factory=list)
    error: str | None = None


def stream_arena(policy, pairs: Sequence[tuple[Harness, Any]], task, *, max_new_tokens: int | None = 64,
                 temperature: float = 0.0, seed: int = 0, cancel: threading.Event | None = None,
                 ) -> Iterator[ArenaUpdate]:
    """Run every (harness, example) pair through :func:`rollout_pairs` (one batch, tools executed,
    scored by ``task``) in a worker thread, yielding the chats as they grow. Close the generator (or
    set ``cancel``) to stop generation early."""
    from fst_lab.rollout import rollout_pairs

    cancel = cancel or threading.Event()
    events: queue.Queue = queue.Queue()
    tap = _TapPolicy(policy, events, cancel)
    n_prompt = [len(h.render(ex.inputs)[0]) for h, ex in pairs]
    result: dict[str, Any] = {}

    def work():
        try:
            result["trajs"] = rollout_pairs(tap, list(pairs), task, temperature=temperature,
                                            max_new_tokens=max_new_tokens, seed=seed, batch_size=max(1, len(pairs)))
        except _Cancelled:
            result["error"] = "cancelled"
        except Exception as e:  # shown in the panes, never raised into the UI thread
            log.exception("arena rollout failed")
            result["error"] = f"{type(e).__name__}: {e}"
        finally:
            events.put(("end", None, None))

    snap: list[list[dict]] = [h.render(ex.inputs)[0] for h, ex in pairs]
    live: list[str | None] = [None] * len(pairs)

    def frame() -> list[list[dict]]:
        out = []
        for s, (h, _) in enumerate(pairs):
            chat = chat_messages(snap[s], n_prompt[s], h)
            if live[s] is not None:
                chat.append({"role": "assistant", "content": _esc(live[s]) or "…"})
            out.append(chat)
        return out

    worker = threading.Thread(target=work, name="fst-arena", daemon=True)
    worker.start()
    try:
        yield ArenaUpdate(frame())
        ended = False
        while not ended:
            try:
                kind, side, payload = events.get(timeout=0.5)
            except queue.Empty:
                continue
            batch = [(kind, side, payload)]
            while True:  # coalesce whatever else arrived: one UI update per burst
                try:
                    batch.append(events.get_nowait())
                except queue.Empty:
                    break
            for kind, side, payload in batch:
                if kind == "messages":
                    snap[side], live[side] = payload, None
                elif kind == "text":
                    live[side] = payload
                elif kind == "end":
                    ended = True
            if not ended:
                yield ArenaUpdate(frame())
        worker.join(timeout=5)
        trajs = result.get("trajs") or []
        if trajs:
            chats = [chat_messages(t.messages, t.n_prompt_messages, h) for t, (h, _) in zip(trajs, pairs)]
        else:
            chats = frame()
        yield ArenaUpdate(chats, done=True, trajectories=trajs, error=result.get("error"))
    finally:
        cancel.set()  # a closed generator (client gone) stops the worker at its next token


# ============================================================================ the tab
def pick_inputs(ha: Harness, hb: Harness, spec: C.TaskSpec, example_id: str | None, free_text: str | None):
    """(example A, example B, task or None, scored) for the arena's inputs, or raise ValueError with the
    message to show. Typed free text wins over a selected example: what you type is what is asked."""
    text = (free_text or "").strip()
    if text:
        try:
            task = C.get_task_cached(spec)  # its tools still run; nothing to score against
        except Exception:
            task = None
        return C.free_text_example(ha, text), C.free_text_example(hb, text), C.Unscored(task), False
    if not example_id:
        raise ValueError("⚠️ type an input or pick a task example")
    try:
        task = C.get_task_cached(spec)
    except Exception as e:  # e.g. a user task that needs constructor arguments
        raise ValueError(f"❌ task '{spec.name}': {e}") from None
    try:
        ex = C.find_example(spec, example_id)
    except KeyError as e:
        raise ValueError(f"❌ {e.args[0]}") from None
    return ex, ex, task, True


def build_tab(app, header) -> dict:
    """Lay out the Arena tab inside the current ``gr.Tab`` and wire its events. Returns the components
    the run picker updates (``task``, ``example``, ``max_tokens``)."""
    import gradio as gr

    with gr.Row():
        task_dd = gr.Dropdown(label="Task", choices=C.task_names(), value="hover", allow_custom_value=True, scale=1)
        example_dd = gr.Dropdown(label="Input: a task example (scored) or free text",
                                 choices=[("✍️ free text (type below)", C.FREE_TEXT)], value=C.FREE_TEXT,
                                 allow_custom_value=True, scale=3)
    free_text = gr.Textbox(label="Free text (when filled, it is what both harnesses answer, unscored)",
                           placeholder="e.g. a claim, a question…", lines=2, elem_id="free-text")
    with gr.Row():
        max_tokens = gr.Slider(8, 512, value=64, step=8, label="max new tokens per turn")
        temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.1, label="temperature (0 = greedy)")
        go_btn = gr.Button("▶ Ask both", variant="primary")
    notice = gr.Markdown()
    with gr.Row():
        with gr.Column():
            chat_a = gr.Chatbot(label="Harness A", height=460, elem_id="chat-a")
            score_a = gr.Markdown(elem_id="score-a")
        with gr.Column():
            chat_b = gr.Chatbot(label="Harness B", height=460, elem_id="chat-b")
            score_b = gr.Markdown(elem_id="score-b")

    def arena(run_name, cycle, ref_a, ref_b, weights, task_name, example_id, text, max_new_tokens, temp):
        empty = ([], [], "", "")
        run, msg = app.open(run_name)
        if msg:
            yield (*empty, msg)
            return
        try:
            ha, hb = app.catalog.resolve_harness(ref_a, run), app.catalog.resolve_harness(ref_b, run)
        except (RunDirError, HarnessError) as e:
            yield (*empty, f"❌ {e}")
            return
        try:
            ex_a, ex_b, task, scored = pick_inputs(ha, hb, app.spec(run, task_name, ha), example_id, text)
        except ValueError as e:
            yield (*empty, str(e))
            return
        yield (*empty, "loading the policy…")
        policy, note = app.policies.for_run(run, weights or "base")
        note += (f" · task `{getattr(task, 'name', task_name)}` · "
                 + ("scored task example" if scored else "free text (unscored)")
                 + f" · max {int(max_new_tokens)} new tokens/turn · temperature {temp}")
        for up in stream_arena(policy, [(ha, ex_a), (hb, ex_b)], task, max_new_tokens=int(max_new_tokens),
                               temperature=float(temp)):
            if not up.done:
                yield up.chats[0], up.chats[1], "*generating…*", "*generating…*", note
                continue
            if up.error:
                yield up.chats[0], up.chats[1], f"❌ {up.error}", f"❌ {up.error}", note
                return
            ta, tb = up.trajectories
            yield up.chats[0], up.chats[1], score_markdown(ta, scored), score_markdown(tb, scored), note

    def list_examples(run_name, task_name):
        run, _ = app.open(run_name)
        return examples_dropdown(app.spec(run, task_name))

    inputs = [header.run_dd, header.cycle_dd, header.harness_a, header.harness_b, header.weights, task_dd,
              example_dd, free_text, max_tokens, temperature]
    outputs = [chat_a, chat_b, score_a, score_b, notice]
    # one policy, one arena at a time: both triggers share a concurrency slot
    go_btn.click(arena, inputs, outputs, api_name="arena", concurrency_id="arena")
    free_text.submit(arena, inputs, outputs, api_name="arena_submit", concurrency_id="arena")
    task_dd.input(list_examples, [header.run_dd, task_dd], example_dd, api_name="examples")
    return {"task": task_dd, "example": example_dd, "max_tokens": max_tokens}


def examples_dropdown(spec: C.TaskSpec):
    import gradio as gr

    try:
        return gr.Dropdown(choices=C.example_choices(spec), value=C.FREE_TEXT)
    except Exception as e:  # an unknown task: free text only
        return gr.Dropdown(choices=[(f"free text only ({e})", C.FREE_TEXT)], value=C.FREE_TEXT)


def run_max_new_tokens(run, harness) -> int:
    """New tokens per turn as the run generated them: its config's ``max_new_tokens`` (which overrides every
    harness), else the harness's own ``loop.max_new_tokens``, else 64; kept on the slider's 8..512 scale."""
    cfg = (run.config or {}) if run is not None else {}
    n = cfg.get("max_new_tokens")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        n = harness.loop.max_new_tokens if harness is not None else 64
    return max(8, min(512, int(n)))


def for_run(app, run, harness_a) -> list:
    """The tab's [task, example] dropdowns for a newly selected run."""
    import gradio as gr

    spec = app.spec(run, None, harness_a)
    tasks = C.task_names()
    return [gr.Dropdown(choices=tasks if spec.name in tasks else tasks + [spec.name], value=spec.name),
            examples_dropdown(spec)]
