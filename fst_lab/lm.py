"""The reflection LM: any LiteLLM model string, with the local policy as the offline default.

GEPA's fast loop needs one thing from a language model: ``(prompt | messages) -> str``. This module
provides it through LiteLLM, so a frontier API, a local Ollama/vLLM server and the in-process policy
all take *the same code path*:

    >>> lm = ReflectionLM("openai/gpt-4.1-mini")                                   # key from OPENAI_API_KEY
    >>> lm = ReflectionLM("hosted_vllm/Qwen/Qwen3-8B", api_base="http://127.0.0.1:8000/v1")
    >>> register_local_policy(policy)                                             # -> "fst-local/policy"
    >>> lm = ReflectionLM("fst-local/policy")                                     # offline default
    >>> text = lm("Rewrite this instruction: ...")
    >>> lm.stats.to_json()      # calls, failures, retries, tokens, cost (0 for unknown models)

``fst-local/<name>`` is a ``litellm.CustomLLM`` registered in ``litellm.custom_provider_map``
that serves chat completions from an in-process :class:`fst_lab.models.Policy`.

Failures never come back as text. A timeout, a 429/5xx still failing after the retries, an empty,
malformed or absurdly long reply all raise :class:`ReflectionError` from the call (GEPA's proposer
drops that proposal and the run goes on; :mod:`fst_lab.fast` counts it). Retries are done here, not
by LiteLLM: its ``num_retries`` path needs ``tenacity``, which LiteLLM does not install, and without
it every failure turns into an opaque "tenacity import failed" exception.

Importing this module is cheap: LiteLLM (~4 s to import) is imported on first use, after setting
``LITELLM_LOCAL_MODEL_COST_MAP`` so it never fetches its cost map over the network.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from fst_lab.errors import FstLabError

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

if TYPE_CHECKING:  # pragma: no cover
    from fst_lab.models import Policy

log = logging.getLogger(__name__)

LOCAL_PROVIDER = "fst-local"
DEFAULT_REFLECTION_LM = f"{LOCAL_PROVIDER}/policy"
LOCAL_DEFAULT_MAX_TOKENS = 256  # the local provider's reply cap when the caller sets none
MOCK_TIMEOUT = "litellm.Timeout"  # a mock_response value that makes LiteLLM raise its own Timeout

# Failure kinds worth retrying: the same request may well succeed a moment later.
TRANSIENT = frozenset({"timeout", "rate_limit", "server", "connection"})


class ReflectionError(FstLabError, RuntimeError):
    """A reflection call failed; ``kind`` says how (timeout, rate_limit, server, connection, auth,
    bad_request, not_found, empty, malformed, too_long, error)."""

    def __init__(self, detail: str, *, kind: str, model: str, attempts: int = 1):
        super().__init__(detail)
        self.detail, self.kind, self.model, self.attempts = detail, kind, model, attempts

    def __str__(self) -> str:
        return (f"reflection LM '{self.model}' failed ({self.kind}) after {self.attempts} attempt(s): "
                f"{self.detail}")


_QUIETED = False


def _litellm():
    global _QUIETED
    import litellm

    if not _QUIETED:  # its "Give Feedback / Get Help" banner on every error is noise in our logs
        litellm.suppress_debug_info = True
        _QUIETED = True
    return litellm


# ---------------------------------------------------------------------------- statistics
@dataclass
class ReflectionStats:
    """Cumulative counters of one :class:`ReflectionLM` (a call = one ``lm(prompt)``)."""

    calls: int = 0
    failures: int = 0
    retries: int = 0  # extra attempts after transient errors
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0  # USD from litellm.completion_cost; 0 for models it doesn't price
    seconds: float = 0.0
    length_stops: int = 0  # replies that stopped at the token limit (finish_reason "length"): cut off
    failure_kinds: dict[str, int] = field(default_factory=dict)
    last_error: str = ""

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> dict:
        d = asdict(self)
        d["tokens"] = self.tokens
        return d

    def since(self, before: "ReflectionStats") -> "ReflectionStats":
        """The counters accumulated after the snapshot ``before``."""
        kinds = {k: v - before.failure_kinds.get(k, 0) for k, v in self.failure_kinds.items()}
        return ReflectionStats(
            calls=self.calls - before.calls, failures=self.failures - before.failures,
            retries=self.retries - before.retries, prompt_tokens=self.prompt_tokens - before.prompt_tokens,
            completion_tokens=self.completion_tokens - before.completion_tokens, cost=self.cost - before.cost,
            seconds=self.seconds - before.seconds, length_stops=self.length_stops - before.length_stops,
            failure_kinds={k: v for k, v in kinds.items() if v},
            last_error=self.last_error if self.failures > before.failures else "")


def classify_error(exc: BaseException) -> str:
    """A LiteLLM/OpenAI exception -> failure kind (see :data:`TRANSIENT` for the retried ones)."""
    if isinstance(exc, ReflectionError):
        return exc.kind
    try:
        import openai
    except ImportError:  # pragma: no cover - litellm depends on openai
        openai = None
    if openai is not None:
        if isinstance(exc, openai.APITimeoutError):
            return "timeout"
        if isinstance(exc, openai.RateLimitError):
            return "rate_limit"
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return "auth"
        if isinstance(exc, openai.NotFoundError):
            return "not_found"
        if isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError):
            return "bad_request"
        if isinstance(exc, openai.APIConnectionError):
            return "connection"
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        if status == 408:
            return "timeout"
        if status == 429:
            return "rate_limit"
        if status >= 500:
            return "server"
        if status in (401, 403):
            return "auth"
        if status == 404:
            return "not_found"
        if 400 <= status < 500:
            return "bad_request"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionError):
        return "connection"
    return "error"


# ---------------------------------------------------------------------------- the reflection LM
class ReflectionLM:
    """A LiteLLM-backed ``(prompt | messages) -> str`` callable, as GEPA's ``reflection_lm`` expects.

    Args:
        model: any LiteLLM model string (``openai/...``, ``anthropic/...``, ``ollama/...``,
            ``hosted_vllm/...``) or ``fst-local/<name>`` (see :func:`register_local_policy`).
        api_base: server URL for self-hosted OpenAI-compatible endpoints.
        api_key: passed to LiteLLM on each call; never logged, printed or serialised (``repr`` and
            :meth:`describe` only say whether one is set). Omit it to let LiteLLM read the provider's
            usual environment variable (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ...).
        num_retries: extra attempts after a transient failure (timeout, 429, 5xx, connection).
        timeout: seconds per attempt.
        temperature, max_tokens: sampling settings (None = the provider's default; the local
            provider then decodes greedily with at most 256 new tokens).
        retry_backoff: first wait between attempts in seconds, doubled each retry (capped at 30 s).
        max_reply_chars: longer replies are rejected as ``too_long`` (a runaway generation is no
            usable instruction, and would bloat every later prompt).
        mock_response: passed through to ``litellm.completion`` (no network call) for tests. A list
            or tuple is consumed one item per *attempt*, cycling. The string ``"litellm.Timeout"``
            makes LiteLLM raise its Timeout (via ``mock_timeout``) after waiting ``timeout``.
        **completion_kwargs: anything else for ``litellm.completion`` (``top_p``, ``seed``, ``stop``).
    """

    def __init__(self, model: str = DEFAULT_REFLECTION_LM, *, api_base: str | None = None,
                 api_key: str | None = None, num_retries: int = 3, timeout: float = 60.0,
                 temperature: float | None = None, max_tokens: int | None = None, retry_backoff: float = 1.0,
                 max_reply_chars: int = 50_000, mock_response: Any = None, **completion_kwargs: Any):
        if not model or "/" not in model:
            raise ValueError(f"reflection model must be a LiteLLM 'provider/model' string, got {model!r} "
                             f"(e.g. 'openai/gpt-4.1-mini', 'ollama/qwen3:8b' or '{DEFAULT_REFLECTION_LM}')")
        if num_retries < 0:
            raise ValueError(f"num_retries must be >= 0, got {num_retries}")
        self.model = model
        self.api_base = api_base
        self.__api_key = api_key  # name-mangled: kept out of vars() dumps and repr
        self.num_retries = int(num_retries)
        self.timeout = float(timeout)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.retry_backoff = float(retry_backoff)
        self.max_reply_chars = int(max_reply_chars)
        self.completion_kwargs = dict(completion_kwargs)
        if isinstance(mock_response, (list, tuple)):
            if not mock_response:
                raise ValueError("mock_response sequence is empty")
            self._mock_cycle = itertools.cycle(list(mock_response))
        elif mock_response is not None:
            self._mock_cycle = itertools.repeat(mock_response)
        else:
            self._mock_cycle = None
        self._stats = ReflectionStats()
        self._lock = threading.Lock()

    # -- GEPA's cost/token protocol (``gepa.lm.LM``): lets max_reflection_cost stop a run
    @property
    def total_cost(self) -> float:
        return self._stats.cost

    @property
    def total_tokens_in(self) -> int:
        return self._stats.prompt_tokens

    @property
    def total_tokens_out(self) -> int:
        return self._stats.completion_tokens

    @property
    def stats(self) -> ReflectionStats:
        """A snapshot copy of the counters."""
        with self._lock:
            return ReflectionStats(**{**asdict(self._stats), "failure_kinds": dict(self._stats.failure_kinds)})

    @property
    def is_local(self) -> bool:
        return self.model.startswith(LOCAL_PROVIDER + "/")

    def describe(self) -> dict:
        """Settings safe to log or save (the key itself never appears)."""
        return {"model": self.model, "api_base": self.api_base, "api_key_set": self.__api_key is not None,
                "num_retries": self.num_retries, "timeout": self.timeout, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "mock": self._mock_cycle is not None}

    def __repr__(self) -> str:
        extra = f", api_base={self.api_base!r}" if self.api_base else ""
        key = ", api_key=<set>" if self.__api_key is not None else ""
        return f"ReflectionLM({self.model!r}{extra}{key})"

    # -- the call
    def __call__(self, prompt: str | list[dict[str, Any]]) -> str:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        _litellm()  # the one-off import (~4 s) is not the model's time
        t0 = time.time()
        with self._lock:
            self._stats.calls += 1
        attempts = 0
        try:
            while True:
                attempts += 1
                try:
                    return self._attempt(messages)
                except ReflectionError as e:  # a reply we can't use: retrying won't change the model
                    e.attempts = attempts
                    raise
                except Exception as e:  # LiteLLM/OpenAI errors, or a broken local provider
                    kind = classify_error(e)
                    if kind in TRANSIENT and attempts <= self.num_retries:
                        with self._lock:
                            self._stats.retries += 1
                        wait = min(30.0, self.retry_backoff * (2 ** (attempts - 1)))
                        log.info("reflection LM %s: %s (%s); retry %d/%d in %.1fs", self.model, kind,
                                 self._redact(_short(e)), attempts, self.num_retries, wait)
                        if wait > 0:
                            time.sleep(wait)
                        continue
                    raise ReflectionError(f"{type(e).__name__}: {self._redact(_short(e))}", kind=kind,
                                          model=self.model, attempts=attempts) from None
        except ReflectionError as e:
            with self._lock:
                self._stats.failures += 1
                self._stats.failure_kinds[e.kind] = self._stats.failure_kinds.get(e.kind, 0) + 1
                self._stats.last_error = str(e)
            log.warning("%s", e)
            raise
        finally:
            with self._lock:
                self._stats.seconds += time.time() - t0

    def _redact(self, text: str) -> str:
        """Provider error messages may echo the key back: never pass it on."""
        key = self.__api_key
        return text.replace(key, "<api_key>") if key and len(key) >= 4 else text

    def _attempt(self, messages: list[dict]) -> str:
        litellm = _litellm()
        if self.is_local:
            _ensure_provider_registered()
        kwargs: dict[str, Any] = dict(self.completion_kwargs)
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        if self.api_base is not None:
            kwargs["api_base"] = self.api_base
        if self.__api_key is not None:
            kwargs["api_key"] = self.__api_key
        if self._mock_cycle is not None:
            mock = next(self._mock_cycle)
            if isinstance(mock, str) and mock == MOCK_TIMEOUT:
                kwargs.update(mock_response="(timed out)", mock_timeout=True)
            elif isinstance(mock, str) and mock == "":  # LiteLLM treats "" as "no mock": spell it out
                kwargs["mock_response"] = {"choices": [{"index": 0, "finish_reason": "stop",
                                                        "message": {"role": "assistant", "content": ""}}]}
            else:
                kwargs["mock_response"] = mock
        # num_retries/max_retries = 0: retries are ours (see module docstring).
        resp = litellm.completion(model=self.model, messages=messages, timeout=self.timeout, num_retries=0,
                                  max_retries=0, drop_params=True, **kwargs)
        self._account(resp)  # tokens are spent even when the reply turns out unusable
        text, finish = self._extract(resp)
        if finish == "length":
            with self._lock:
                self._stats.length_stops += 1
            limit = self.max_tokens if self.max_tokens is not None else "the provider's default"
            log.warning("reflection LM %s stopped at its token limit (%s); the reply is truncated", self.model, limit)
        return text

    def _extract(self, resp: Any) -> tuple[str, str | None]:
        try:
            choice = resp.choices[0]
            content = choice.message.content
            finish = getattr(choice, "finish_reason", None)
        except (AttributeError, IndexError, KeyError, TypeError) as e:
            raise ReflectionError(f"malformed response ({type(e).__name__}: {e})", kind="malformed",
                                  model=self.model) from None
        if content is not None and not isinstance(content, str):
            raise ReflectionError(f"non-text content ({type(content).__name__})", kind="malformed",
                                  model=self.model)
        if content is None or not content.strip():
            raise ReflectionError(f"empty reply (finish_reason={finish!r})", kind="empty", model=self.model)
        if len(content) > self.max_reply_chars:
            raise ReflectionError(f"{len(content):,} characters (> max_reply_chars={self.max_reply_chars:,})",
                                  kind="too_long", model=self.model)
        return content, finish

    def _account(self, resp: Any) -> None:
        usage = getattr(resp, "usage", None)
        p = int(getattr(usage, "prompt_tokens", 0) or 0) if usage is not None else 0
        c = int(getattr(usage, "completion_tokens", 0) or 0) if usage is not None else 0
        cost = 0.0
        if not self.is_local:
            try:
                cost = float(_litellm().completion_cost(completion_response=resp) or 0.0)
            except Exception:  # unknown model / no price: cost is unknown, count it as 0
                cost = 0.0
        with self._lock:
            self._stats.prompt_tokens += p
            self._stats.completion_tokens += c
            self._stats.cost += cost


def _short(e: BaseException, limit: int = 300) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= limit else s[:limit] + "..."


def make_reflection_lm(model: str | ReflectionLM | Any = DEFAULT_REFLECTION_LM, **kwargs: Any) -> Any:
    """A :class:`ReflectionLM` from a model string; an existing callable is returned as is."""
    if isinstance(model, str):
        return ReflectionLM(model, **kwargs)
    if not callable(model):
        raise TypeError(f"reflection LM must be a LiteLLM model string or a callable, got {type(model).__name__}")
    return model


# ---------------------------------------------------------------------------- the local provider
_LOCAL_POLICIES: dict[str, "Policy"] = {}
_HANDLER: Any = None
_REG_LOCK = threading.Lock()


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _make_handler():
    """The CustomLLM subclass, built on first use so importing this module stays cheap."""
    from litellm import CustomLLM
    from litellm.llms.custom_llm import CustomLLMError
    from litellm.types.utils import Usage

    class LocalPolicyLLM(CustomLLM):
        """Serves ``fst-local/<name>`` chat completions from registered in-process policies."""

        def completion(self, model, messages, api_base, custom_prompt_dict, model_response, print_verbose,
                       encoding, api_key, logging_obj, optional_params, *args, **kwargs):
            name = model.split("/", 1)[1] if model.startswith(LOCAL_PROVIDER + "/") else model
            policy = _LOCAL_POLICIES.get(name)
            if policy is None:
                raise CustomLLMError(status_code=404, message=(
                    f"no local policy registered as '{LOCAL_PROVIDER}/{name}' (registered: "
                    f"{sorted(_LOCAL_POLICIES)}); call fst_lab.lm.register_local_policy(policy, name='{name}')"))
            msgs = [{"role": m.get("role", "user"), "content": _message_text(m.get("content"))} for m in messages]
            opt = optional_params or {}
            max_new = int(opt.get("max_tokens") or opt.get("max_completion_tokens") or LOCAL_DEFAULT_MAX_TOKENS)
            gen = policy.generate([msgs], max_new_tokens=max_new, temperature=float(opt.get("temperature") or 0.0),
                                  top_p=float(opt.get("top_p") or 1.0), seed=opt.get("seed"), batch_size=1)[0]
            model_response.choices[0].message.content = gen.text
            model_response.choices[0].finish_reason = "stop" if gen.finished else "length"
            model_response.model = f"{LOCAL_PROVIDER}/{name}"
            setattr(model_response, "usage", Usage(prompt_tokens=gen.prompt_tokens,
                                                   completion_tokens=gen.completion_tokens,
                                                   total_tokens=gen.prompt_tokens + gen.completion_tokens))
            return model_response

        async def acompletion(self, *args, **kwargs):
            return self.completion(*args, **kwargs)

    return LocalPolicyLLM()


def _ensure_provider_registered() -> None:
    global _HANDLER
    litellm = _litellm()
    with _REG_LOCK:
        if _HANDLER is None:
            _HANDLER = _make_handler()
        entries = [e for e in litellm.custom_provider_map if e.get("provider") != LOCAL_PROVIDER]
        entries.append({"provider": LOCAL_PROVIDER, "custom_handler": _HANDLER})
        litellm.custom_provider_map = entries
        setup = getattr(getattr(litellm, "utils", None), "custom_llm_setup", None)
        if setup is not None:
            setup()


def register_local_policy(policy: "Policy", name: str = "policy") -> str:
    """Serve ``policy`` as LiteLLM model ``fst-local/<name>`` (re-registering replaces it)."""
    if not name or "/" in name:
        raise ValueError(f"local model name must be non-empty and contain no '/', got {name!r}")
    _LOCAL_POLICIES[name] = policy
    _ensure_provider_registered()
    return f"{LOCAL_PROVIDER}/{name}"


def unregister_local_policy(name: str = "policy") -> None:
    _LOCAL_POLICIES.pop(name, None)


def local_policies() -> dict[str, "Policy"]:
    """The policies currently served under ``fst-local/``."""
    return dict(_LOCAL_POLICIES)
