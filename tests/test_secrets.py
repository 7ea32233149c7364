"""API keys never reach the run directory, the logs, the events, the saved config, notebook outputs or
the app.

Canary keys are put where real ones live: ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY`` / ``HF_TOKEN`` in
the environment, a key named by ``fast.api_key_env`` (the only way a run config refers to a key), and
an explicit ``ReflectionLM(api_key=...)``. The reflection LM is a real OpenAI-compatible server on
127.0.0.1 (tests/scripts/fault_server.py), which must *receive* the keys — so the scan below is
looking for something that really passed through the process. Then every byte written by the run
(including GEPA's pickled state), every captured log record (DEBUG included), stdout/stderr, the
config YAML dump and what the app's endpoints return are searched for each canary.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "scripts"))
sys.path.insert(0, str(REPO))
from fault_server import FaultServer  # noqa: E402

CANARIES = {
    "OPENAI_API_KEY": "sk-canary-openai-0c9a1f3e5d7b",
    "ANTHROPIC_API_KEY": "sk-ant-canary-anthropic-7e1d2c",
    "HF_TOKEN": "hf_canaryHuggingFaceToken4b2a",
    "FST_REFLECTION_KEY": "sk-canary-api-key-env-91ab33",  # named by fast.api_key_env
}
EXPLICIT = "sk-canary-explicit-arg-5f60d2"  # passed as ReflectionLM(api_key=...)
ALL = [*CANARIES.values(), EXPLICIT]


def _leaks(blob: bytes | str, where: str) -> list[str]:
    data = blob.encode("utf-8", "replace") if isinstance(blob, str) else blob
    out = []
    for c in ALL:
        for form in (c.encode(), c.encode("utf-16-le"), c[8:].encode()):  # also a partial (key minus prefix)
            if form in data:
                out.append(f"{c} in {where}")
                break
    return out


def scan_tree(root: Path) -> list[str]:
    found = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            found += _leaks(p.read_bytes(), str(p.relative_to(root)))
        found += _leaks(p.name, f"file name {p}")
    return found


@pytest.fixture
def canary_env(monkeypatch):
    for k, v in CANARIES.items():
        monkeypatch.setenv(k, v)
    return CANARIES


@pytest.fixture(scope="module")
def server():
    with FaultServer(default="ok") as srv:
        yield srv


def _config(tmp_path, server, **kw):
    from fst_lab.config import FSTConfig

    fast = {"reflection_lm": "openai/gpt-4.1-mini", "api_base": server.api_base, "api_key_env": "FST_REFLECTION_KEY",
            "reflection_retries": 1, "reflection_timeout": 5.0, "bootstrap": False, "reflection_minibatch_size": 1,
            "max_new_tokens": 4, "max_metric_calls": 6}
    base = dict(task="math", mode="fst", cycles=1, schedule="p -> w", population_size=2, num_generations=2,
                prompts_per_step=1, fast_train_size=2, fast_val_size=2, eval_size=2, max_new_tokens=4,
                fast=fast, slow={"learning_rate": 1e-3, "kl_probe_size": 0}, runs_root=str(tmp_path / "runs"),
                run_name="secret-run", save_rollouts=2)
    base.update(kw)
    return FSTConfig(**base)


@pytest.mark.slow
def test_a_run_with_keys_writes_and_logs_none_of_them(tmp_path, canary_env, server, caplog, capfd):
    from fst_lab.fast import FastConfig, fast_step
    from fst_lab.lm import ReflectionLM
    from fst_lab.models import tiny_policy
    from fst_lab.session import Session

    caplog.set_level(logging.DEBUG)  # everything any logger (ours, LiteLLM, GEPA, TRL) emits
    n0 = len(server.requests)
    cfg = _config(tmp_path, server)
    s = Session(cfg, policy=tiny_policy(seed=0), progress=False)
    s.run()  # one GEPA round through the server, one RL step, an evaluation, a population snapshot
    events = []
    s.listeners.append(events.append)
    # an explicit api_key through fast_step, writing its GEPA dir inside the run dir
    lm = ReflectionLM("openai/gpt-4.1-mini", api_base=server.api_base, api_key=EXPLICIT, num_retries=0)
    res = fast_step(s.policy, s.task, s.population, s.task.examples("train", 2), s.task.examples("val", 2),
                    config=FastConfig(population_size=2, max_new_tokens=4, bootstrap=False, max_metric_calls=4,
                                      reflection_minibatch_size=1),
                    reflection_lm=lm, run_dir=s.run_dir / "fast" / "explicit", progress=False)
    s.evaluate()
    s.close()

    # the keys did travel: the server got both as Bearer tokens
    auth = {r["headers"].get("Authorization") for r in server.requests[n0:]}
    assert f"Bearer {CANARIES['FST_REFLECTION_KEY']}" in auth and f"Bearer {EXPLICIT}" in auth, auth
    assert res.reflection_calls >= 1

    leaks = scan_tree(s.run_dir)
    assert any((s.run_dir / "fast").rglob("gepa_state.bin")), "GEPA's pickled state was scanned too"
    leaks += _leaks("\n".join(f"{r.name} {r.levelname} {r.getMessage()} {r.args!r}" for r in caplog.records),
                    "log records")
    out, err = capfd.readouterr()
    leaks += _leaks(out + err, "stdout/stderr")
    leaks += _leaks(json.dumps(events, default=str), "session events")
    leaks += _leaks(cfg.to_yaml(), "FSTConfig YAML") + _leaks(json.dumps(res.to_json(), default=str), "FastResult")
    leaks += _leaks(repr(lm) + json.dumps(lm.describe()) + json.dumps(lm.stats.to_json()), "ReflectionLM repr")
    leaks += _leaks(json.dumps(s.fast_config().to_json()) + repr(s.fast_config()), "FastConfig")
    assert not leaks, leaks
    assert caplog.records, "logs were captured"


def test_config_dump_has_no_key_even_when_env_is_set(tmp_path, canary_env):
    from fst_lab.config import FSTConfig

    cfg = FSTConfig(fast={"reflection_lm": "anthropic/claude-sonnet-4", "api_key_env": "ANTHROPIC_API_KEY"})
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    assert not _leaks(p.read_bytes(), "config file")
    assert FSTConfig.load(p).fast.api_key_env == "ANTHROPIC_API_KEY"


def test_notebooks_carry_no_key_like_outputs():
    import re

    key_like = re.compile(r"(sk-[A-Za-z0-9_\-]{16,}|sk-ant-[A-Za-z0-9_\-]{10,}|hf_[A-Za-z0-9]{20,})")
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        d = json.loads(nb.read_text())
        for cell in d.get("cells", []):
            for o in cell.get("outputs", []):
                text = json.dumps(o)
                assert not key_like.search(text), f"{nb.name}: key-like text in an output"
        assert not _leaks(nb.read_bytes(), nb.name)


def test_sandboxed_tool_code_cannot_see_the_keys(canary_env):
    from fst_lab.tasks.common import python_tool

    out = python_tool("import os\nprint(sorted(os.environ.items()))")
    assert not _leaks(out, "tool observation") and "OPENAI_API_KEY" not in out


# ---------------------------------------------------------------------------- the app
def _free_port() -> int:
    with socket.socket() as sck:
        sck.bind(("127.0.0.1", 0))
        return sck.getsockname()[1]


@pytest.mark.slow
def test_app_endpoints_return_no_key(tmp_path, canary_env, server):
    try:
        import app as app_module
    except ImportError as e:  # pragma: no cover - the app is optional for this test
        pytest.skip(f"app.py is not importable ({e})")
    if not hasattr(app_module, "build_app"):  # pragma: no cover
        pytest.skip("app.py has no build_app yet")
    import yaml
    from gradio_client import Client

    from fst_lab.models import tiny_policy
    from fst_lab.session import Session

    # a run made with the keys in the environment, plus a copy whose config.yaml carries literal keys
    cfg = _config(tmp_path, server, schedule="w", mode="rl")
    s = Session(cfg, policy=tiny_policy(seed=0), progress=False)
    s.run()
    s.close()
    root = Path(cfg.runs_root)
    leaky = root / "leaky"
    import shutil

    shutil.copytree(s.run_dir, leaky)
    d = yaml.safe_load((leaky / "config.yaml").read_text())
    d["fast"] = {**d["fast"], "api_key": EXPLICIT, "headers": {"Authorization": f"Bearer {EXPLICIT}"}}
    d["task_kwargs"] = {"token": CANARIES["HF_TOKEN"]}
    (leaky / "config.yaml").write_text(yaml.safe_dump(d))

    demo = app_module.build_app(root, policy_factory=lambda name: tiny_policy(seed=0))
    port = _free_port()
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        outputs = [client.predict(api_name="/list_runs")]
        for run in (s.run_dir.name, "leaky"):
            outputs.append(client.predict(run, api_name="/select_run"))
            outputs.append(client.predict(run, "latest", api_name="/lineage"))
            outputs.append(client.predict(run, api_name="/curves"))
        config_text = yaml.safe_dump({**d, "run_name": "from-app", "fast": {**d["fast"]}})
        outputs.append(client.predict(config_text, api_name="/session_start"))  # refused: carries a key
        outputs.append(client.predict(api_name="/session_poll"))
        assert not (root / "from-app").exists(), "a config carrying a key must be refused, not run"
        blob = json.dumps(outputs, default=str)
        leaks = _leaks(blob, "app responses")
        for f in Path(tmp_path).rglob("*"):  # anything the app wrote (e.g. a run from /session_start)
            if f.is_file() and f.stat().st_size < 5_000_000 and f != leaky / "config.yaml":
                leaks += _leaks(f.read_bytes(), str(f))
        assert not leaks, leaks
    finally:
        steering = getattr(demo, "fst", {}).get("steering") if isinstance(getattr(demo, "fst", None), dict) else None
        if steering is not None and steering.session is not None:
            steering.stop()
        demo.close()
