"""Reflection LM through LiteLLM: the local provider, fault handling, accounting, key hygiene.

No network: faults are injected with LiteLLM's own ``mock_response``/``mock_timeout``; the local
provider is exercised with a stub policy (the real embedded model serves it in test_fast.py).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from fst_lab.lm import (DEFAULT_REFLECTION_LM, MOCK_TIMEOUT, ReflectionError, ReflectionLM, classify_error,
                        local_policies, make_reflection_lm, register_local_policy, unregister_local_policy)
from fst_lab.models import Generation


class EchoPolicy:
    """Stands in for a Policy: answers with a fixed instruction block and records its calls."""

    def __init__(self, text="```\nSolve it, then write 'Answer: <number>'.\n```", finished=True):
        self.text, self.finished, self.calls = text, finished, []

    def generate(self, conversations, tools=None, *, max_new_tokens=128, temperature=0.0, top_p=1.0, seed=None,
                 batch_size=16):
        self.calls.append({"conversations": conversations, "max_new_tokens": max_new_tokens,
                           "temperature": temperature})
        return [Generation(text=self.text, prompt_tokens=11, completion_tokens=7, finished=self.finished)
                for _ in conversations]


def test_import_is_cheap_and_sets_local_cost_map():
    code = ("import os, sys; os.environ.pop('LITELLM_LOCAL_MODEL_COST_MAP', None); import fst_lab.lm; "
            "print('litellm' in sys.modules, os.environ.get('LITELLM_LOCAL_MODEL_COST_MAP'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def test_local_provider_round_trip():
    stub = EchoPolicy()
    model = register_local_policy(stub, name="echo-test")
    try:
        assert model == "fst-local/echo-test" and local_policies()["echo-test"] is stub
        lm = ReflectionLM(model, max_tokens=32, temperature=0.0)
        out = lm([{"role": "system", "content": "be brief"}, {"role": "user", "content": "rewrite this"}])
        assert "Answer: <number>" in out
        # the provider received the chat messages and the sampling settings
        call = stub.calls[-1]
        assert call["conversations"][0][-1] == {"role": "user", "content": "rewrite this"}
        assert call["max_new_tokens"] == 32 and call["temperature"] == 0.0
        s = lm.stats
        assert (s.calls, s.failures, s.prompt_tokens, s.completion_tokens, s.cost) == (1, 0, 11, 7, 0.0)
        assert lm.total_tokens_in == 11 and lm.total_tokens_out == 7 and lm.total_cost == 0.0  # GEPA's protocol
        assert s.length_stops == 0  # the stub finished its reply
        stub.finished = False  # now every reply stops at max_new_tokens: finish_reason "length", counted
        before = lm.stats
        lm("rewrite this")
        assert lm.stats.since(before).length_stops == 1 and lm.stats.length_stops == 1
    finally:
        unregister_local_policy("echo-test")


def test_local_provider_unknown_name_is_a_clear_error():
    lm = ReflectionLM("fst-local/nobody-registered", num_retries=2, retry_backoff=0)
    with pytest.raises(ReflectionError, match="register_local_policy") as ei:
        lm("hi")
    assert ei.value.kind == "not_found" and ei.value.attempts == 1  # not transient: no retries
    assert lm.stats.failures == 1 and lm.stats.retries == 0


def test_default_model_string_and_validation():
    assert DEFAULT_REFLECTION_LM == "fst-local/policy"
    with pytest.raises(ValueError, match="provider/model"):
        ReflectionLM("gpt-4")
    with pytest.raises(TypeError):
        make_reflection_lm(42)
    fn = lambda prompt: "x"  # noqa: E731
    assert make_reflection_lm(fn) is fn
    assert isinstance(make_reflection_lm("openai/gpt-4.1-mini"), ReflectionLM)


def test_mock_reply_and_token_accounting():
    lm = ReflectionLM("openai/gpt-4o-mini", mock_response="```\nnew text\n```", api_key="sk-test")
    assert lm("prompt") == "```\nnew text\n```"
    s = lm.stats
    assert s.calls == 1 and s.failures == 0 and s.tokens == 30  # LiteLLM's mock usage: 10 + 20
    assert s.cost > 0  # a priced model: litellm.completion_cost from the local cost map


def test_cost_of_unpriced_model_is_zero_not_an_error():
    lm = ReflectionLM("openai/some-self-hosted-model", mock_response="ok")
    assert lm("p") == "ok"
    assert lm.stats.cost == 0.0


FAULTS = [
    ("litellm.RateLimitError", "rate_limit", True),
    ("litellm.InternalServerError", "server", True),
    (MOCK_TIMEOUT, "timeout", True),
    ("", "empty", False),
    ("   \n", "empty", False),
    ({"choices": []}, "malformed", False),
    ({"choices": [{"index": 0, "message": {"role": "assistant", "content": None}}]}, "empty", False),
    ("x" * 60_000, "too_long", False),
    ("litellm.ContextWindowExceededError", "bad_request", False),
]


@pytest.mark.parametrize("mock,kind,transient", FAULTS, ids=[f[1] + str(i) for i, f in enumerate(FAULTS)])
def test_faults_raise_classified_errors_after_retries(mock, kind, transient):
    lm = ReflectionLM("openai/gpt-4o-mini", api_key="sk-test", mock_response=mock, num_retries=2,
                      retry_backoff=0, timeout=0.02)
    with pytest.raises(ReflectionError) as ei:
        lm("prompt")
    err = ei.value
    assert err.kind == kind and err.model == "openai/gpt-4o-mini"
    assert err.attempts == (3 if transient else 1)
    s = lm.stats
    assert s.calls == 1 and s.failures == 1 and s.retries == (2 if transient else 0)
    assert s.failure_kinds == {kind: 1} and kind in s.last_error


def test_transient_error_then_success_is_retried():
    lm = ReflectionLM("openai/gpt-4o-mini", api_key="sk-test", retry_backoff=0, num_retries=3,
                      mock_response=["litellm.RateLimitError", "litellm.InternalServerError", "recovered"])
    assert lm("p") == "recovered"
    s = lm.stats
    assert (s.calls, s.failures, s.retries) == (1, 0, 2)


def test_non_transient_exception_objects_are_not_retried():
    import litellm

    auth = litellm.AuthenticationError(message="invalid key", llm_provider="openai", model="gpt-4o-mini")
    lm = ReflectionLM("openai/gpt-4o-mini", api_key="sk-test", mock_response=auth, num_retries=3, retry_backoff=0)
    with pytest.raises(ReflectionError) as ei:
        lm("p")
    assert ei.value.kind == "auth" and ei.value.attempts == 1
    # a generic exception object becomes LiteLLM's MockException (status 500): transient
    lm = ReflectionLM("openai/gpt-4o-mini", mock_response=RuntimeError("boom"), num_retries=1, retry_backoff=0)
    with pytest.raises(ReflectionError) as ei:
        lm("p")
    assert ei.value.kind == "server" and ei.value.attempts == 2


def test_stats_since_snapshot():
    lm = ReflectionLM("openai/gpt-4o-mini", mock_response=["ok", "litellm.RateLimitError"], num_retries=0)
    lm("a")
    before = lm.stats
    with pytest.raises(ReflectionError):
        lm("b")
    assert lm("c") == "ok"
    d = lm.stats.since(before)
    assert (d.calls, d.failures, d.failure_kinds) == (2, 1, {"rate_limit": 1})
    json.dumps(d.to_json())  # serialisable


def test_api_key_is_never_logged_or_serialised(caplog):
    secret = "sk-SECRET-do-not-log-1234"
    lm = ReflectionLM("openai/gpt-4o-mini", api_key=secret, mock_response="litellm.RateLimitError",
                      num_retries=1, retry_backoff=0)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ReflectionError) as ei:
            lm("p")
    assert secret not in caplog.text
    assert secret not in str(ei.value)
    assert secret not in repr(lm) and "<set>" in repr(lm)
    assert lm.describe()["api_key_set"] is True and secret not in json.dumps(lm.describe())
    assert secret not in json.dumps(lm.stats.to_json())
    # a provider that echoes the key in its error message is redacted too
    import litellm

    echo = litellm.AuthenticationError(message=f"Incorrect API key provided: {secret}", llm_provider="openai",
                                       model="gpt-4o-mini")
    lm = ReflectionLM("openai/gpt-4o-mini", api_key=secret, mock_response=echo)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ReflectionError) as ei:
            lm("p")
    assert secret not in str(ei.value) and "<api_key>" in str(ei.value)
    assert secret not in lm.stats.last_error and secret not in caplog.text


def test_classify_error_by_status_code():
    class E(Exception):
        def __init__(self, code):
            self.status_code = code

    assert [classify_error(E(c)) for c in (408, 429, 500, 503, 401, 404, 422)] == [
        "timeout", "rate_limit", "server", "server", "auth", "not_found", "bad_request"]
    assert classify_error(TimeoutError()) == "timeout"
    assert classify_error(ValueError("x")) == "error"
