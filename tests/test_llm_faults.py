"""Reflection-LM faults through *real HTTP*: a misbehaving OpenAI-compatible server on 127.0.0.1
(tests/scripts/fault_server.py) answers LiteLLM with 429s, 5xx, timeouts, dropped connections, empty,
malformed, non-JSON and absurdly long replies.

What must hold: transient faults (429, 5xx, timeouts, broken connections) are retried — the server
*sees* the retries — and a call that recovers succeeds; anything else fails at once with a classified
``ReflectionError``. Inside a fast step every fault only costs its proposal (rejected, logged, counted),
and the run goes on: the session configured the way a user would (``fast: {reflection_lm: openai/...,
api_base: ..., api_key_env: ...}``) finishes its GEPA round, takes a slow step, and the next round
works. (tests/test_fast.py covers the same faults in-process with LiteLLM's ``mock_response``.)
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from fault_server import FaultServer  # noqa: E402

from fst_lab.lm import ReflectionError, ReflectionLM  # noqa: E402

KEY = "sk-fault-test-key"
# mode -> (ReflectionError kinds accepted, transient = retried)
FAULTS = {
    "429": ({"rate_limit"}, True),
    "500": ({"server"}, True),
    "503": ({"server"}, True),
    "timeout": ({"timeout"}, True),
    "drop": ({"server", "connection"}, True),
    "short_body": ({"server", "connection"}, True),
    "not_json": ({"server", "malformed"}, True),
    "html": ({"server", "malformed"}, True),
    "wrong_shape": ({"server", "malformed"}, True),
    "401": ({"auth"}, False),
    "400": ({"bad_request"}, False),
    "404": ({"not_found"}, False),
    "empty": ({"empty"}, False),
    "null": ({"empty"}, False),
    "no_choices": ({"malformed"}, False),
    "long": ({"too_long"}, False),
}
TALLY = {"injected": 0, "survived": 0}  # reported by the last test


@pytest.fixture(scope="module")
def server():
    import litellm  # noqa: F401  (a one-off import of several seconds; not part of any timing below)

    with FaultServer(hang_seconds=2.0) as srv:
        yield srv


def _lm(srv, **kw) -> ReflectionLM:
    kw = {"num_retries": 2, "retry_backoff": 0, "timeout": 0.5, **kw}
    return ReflectionLM("openai/x", api_base=srv.api_base, api_key=KEY, **kw)


@pytest.mark.parametrize("mode", list(FAULTS))
def test_each_fault_is_retried_or_rejected_with_its_kind(server, mode):
    kinds, transient = FAULTS[mode]
    # 1) the fault persists: a classified ReflectionError after 1 + num_retries attempts (transient) or 1
    server.set_script([mode] * 3 + ["ok"], default="ok")
    n0 = len(server.requests)
    lm = _lm(server)
    TALLY["injected"] += 1
    with pytest.raises(ReflectionError) as ei:
        lm("Improve this instruction: be careful.")
    e = ei.value
    assert e.kind in kinds, (mode, e.kind, str(e))
    seen = server.modes_seen()[n0:]
    assert seen == ([mode] * 3 if transient else [mode]), seen
    assert e.attempts == len(seen)
    st = lm.stats
    assert st.failures == 1 and st.retries == (2 if transient else 0) and st.failure_kinds == {e.kind: 1}
    assert KEY not in str(e) and KEY not in repr(lm)
    TALLY["survived"] += 1
    # 2) a transient fault that clears: the retry succeeds with the server's reply
    if transient:
        server.set_script([mode, mode, "ok:```\nrecovered\n```"], default="ok")
        n0 = len(server.requests)
        TALLY["injected"] += 2
        assert _lm(server)("Improve this instruction.") == "```\nrecovered\n```"
        assert server.modes_seen()[n0:] == [mode, mode, "ok:```\nrecovered\n```"]
        TALLY["survived"] += 2


def test_requests_are_real_openai_calls_with_the_key(server):
    server.set_script(["ok"], default="ok")
    n0 = len(server.requests)
    out = _lm(server, temperature=0.3, max_tokens=64)("Rewrite: be brief.")
    assert "step by step" in out
    [req] = server.requests[n0:]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"].get("Authorization") == f"Bearer {KEY}"
    assert req["body"]["model"] == "x" and req["body"]["messages"][-1]["content"] == "Rewrite: be brief."
    assert req["body"]["temperature"] == 0.3 and req["body"]["max_tokens"] == 64


def test_timeout_does_not_wait_for_the_server(server):
    server.set_script(["timeout"] * 2, default="ok")
    t0 = time.time()
    with pytest.raises(ReflectionError, match="timeout"):
        _lm(server, num_retries=1, timeout=0.5)("x")
    assert time.time() - t0 < 1.9 * 2, "each attempt must give up after its own timeout, not the server's hang"


def _script_every_fault(retries: int) -> tuple[list[str], int]:
    """One failed *proposal* per fault: transient faults repeat for every attempt of the call."""
    script = []
    for mode, (_, transient) in FAULTS.items():
        script += [mode] * ((1 + retries) if transient else 1)
    return script, len(FAULTS)


@pytest.mark.slow
def test_session_fast_step_survives_every_fault_and_the_run_goes_on(server, tmp_path, monkeypatch, caplog):
    from fst_lab.config import FSTConfig
    from fst_lab.models import tiny_policy
    from fst_lab.runs import load_run
    from fst_lab.session import Session

    monkeypatch.setenv("FST_FAULT_KEY", KEY)
    retries = 1
    script, n_faults = _script_every_fault(retries)
    server.set_script(script, default="ok")
    n0 = len(server.requests)
    fast = {"reflection_lm": "openai/x", "api_base": server.api_base, "api_key_env": "FST_FAULT_KEY",
            "reflection_retries": retries, "reflection_timeout": 0.5, "bootstrap": False,
            "reflection_minibatch_size": 1, "max_new_tokens": 4, "max_metric_calls": 2 + n_faults + 12}
    cfg = FSTConfig(task="math", mode="fst", cycles=1, steps_per_cycle=1, population_size=2, num_generations=2,
                    prompts_per_step=1, fast_train_size=2, fast_val_size=2, eval_size=2, max_new_tokens=4,
                    fast=fast, runs_root=str(tmp_path), run_name="faults", save_rollouts=1)
    s = Session(cfg, policy=tiny_policy(seed=0), progress=False)
    caplog.set_level(logging.WARNING)
    res = s.fast_step()

    seen = server.modes_seen()[n0:]
    assert seen[: len(script)] == script, "every injected fault reached the server, retries included"
    for mode, (_, transient) in FAULTS.items():
        assert seen.count(mode) == (1 + retries if transient else 1), mode
    assert res.reflection_failures == n_faults and not res.errors
    statuses = [p["status"] for p in res.proposal_log if p["operator"] == "reflect"]
    assert statuses[:n_faults] == ["failed"] * n_faults
    assert "accepted" in statuses[n_faults:] or "rejected" in statuses[n_faults:], statuses
    assert sum(res.reflection["failure_kinds"].values()) == n_faults
    assert res.reflection["retries"] == retries * sum(t for _, t in FAULTS.values())
    logged = [r.getMessage() for r in caplog.records if "reflection" in r.getMessage()]
    assert len([m for m in logged if "failed" in m]) >= n_faults, "each rejected proposal is logged"
    assert not any(KEY in r.getMessage() for r in caplog.records)
    TALLY["injected"] += n_faults
    rec = [m for m in load_run(s.run_dir).metrics if m["kind"] == "fast"][-1]
    assert rec["reflection_failures"] == n_faults

    # the run goes on: a slow step on the new population, then a fault-free round
    s.slow_step(1)
    server.set_script([], default="ok")
    res2 = s.fast_step()
    assert res2.reflection_failures == 0 and res2.reflection_calls >= 1
    assert s.counters["fast_round"] == 2 and s.counters["rl_step"] == 1
    TALLY["survived"] += n_faults


def test_zz_report_fault_counts(capsys):
    with capsys.disabled():
        print(f"\n[llm faults] injected: {TALLY['injected']}, survived: {TALLY['survived']}")
    assert TALLY["injected"] == TALLY["survived"]
