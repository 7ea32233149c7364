"""Opening someone else's run directory never executes code from it.

A real tiny run (a GEPA round, an RL step with a checkpoint, an evaluation, a population snapshot) is
copied as "a run someone sent us" and booby-trapped: every pickle-bearing file — GEPA's
``fast/round_*/gepa_state.bin``, the checkpoint's ``optimizer.pt`` / ``scheduler.pt`` / ``rng_state.pth``
/ ``training_args.bin``, stray ``*.bin`` / ``*.pt`` / ``*.pkl`` files — is replaced by a pickle whose
``__reduce__`` writes a marker file. (A subprocess proves each trap fires when unpickled.) Then:

- fst_lab.runs' loaders, the report and the app's logic (catalog, views, the trained-weights loader)
  and the app itself over HTTP read the run: no marker appears;
- ``Session.resume`` of the foreign run loads checkpoint tensors only with ``weights_only=True``: the
  trapped optimizer state is refused (an error), never run;
- GEPA's pickled state is never loaded, not even on resume of one's own run: each fast step starts a
  fresh GEPA run directory and moves any leftover one aside (``round_NNNN.stale-K``);
- booby-trapped YAML (``!!python/object/apply``) is refused by the safe loaders with a clear error.
"""

from __future__ import annotations

import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

pytestmark = pytest.mark.slow


class _Trap:
    """Unpickling this writes ``marker`` (via builtins.exec: nothing of ours is needed to load it)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def plant(path: Path, markers: Path, *, torch_format: bool = False) -> Path:
    """Replace ``path`` by a booby-trapped pickle; its marker is ``markers/<relative name>``."""
    marker = markers / (str(path).replace("/", "__") + ".fired")
    path.parent.mkdir(parents=True, exist_ok=True)
    if torch_format:
        import torch

        torch.save({"state": _Trap(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"state": _Trap(marker)}))
    return path


TORCH_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")
PICKLE_FILES = ("adapter_model.bin", "pytorch_model.bin")


def booby_trap(run: Path, markers: Path) -> list[Path]:
    markers.mkdir(parents=True, exist_ok=True)
    traps = []
    for p in sorted(run.glob("fast/round_*/gepa_state.bin")):
        traps.append(plant(p, markers))
    nxt = run / "fast" / "round_0002" / "gepa_state.bin"  # the round a resumed run would run next
    traps.append(plant(nxt, markers))
    for ck in sorted(run.glob("checkpoints/step_*")):
        traps += [plant(ck / n, markers, torch_format=True) for n in TORCH_FILES]
        traps += [plant(ck / n, markers) for n in PICKLE_FILES]
    traps += [plant(run / "rollouts" / "extra.pkl", markers), plant(run / "model.pt", markers, torch_format=True),
              plant(run / "populations" / "cycle_0001.pkl", markers)]
    return traps


def fired(markers: Path) -> list[str]:
    return sorted(p.name for p in markers.glob("*.fired"))


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from fst_lab.config import FSTConfig
    from fst_lab.models import tiny_policy
    from fst_lab.session import Session

    root = tmp_path_factory.mktemp("theirs")
    cfg = FSTConfig(task="math", mode="fst", cycles=1, schedule="p -> w", population_size=2, num_generations=2,
                    prompts_per_step=1, fast_train_size=2, fast_val_size=2, eval_size=2, max_new_tokens=4,
                    fast={"max_metric_calls": 4, "reflection_minibatch_size": 1, "max_new_tokens": 4,
                          "reflection_max_tokens": 8},
                    slow={"learning_rate": 1e-3, "kl_probe_size": 0}, runs_root=str(root), run_name="original",
                    save_rollouts=2)
    s = Session(cfg, policy=tiny_policy(seed=0), progress=False)
    s.run()
    s.weights.close()
    run = s.run_dir
    assert (run / "fast" / "round_0001" / "gepa_state.bin").exists()
    assert (run / "checkpoints" / "step_000001" / "optimizer.pt").exists()
    return run


@pytest.fixture
def foreign(real_run, tmp_path):
    """A trapped copy of the run under a fresh runs root: (run dir, markers dir, traps)."""
    root = tmp_path / "runs"
    run = root / "theirs"
    shutil.copytree(real_run, run)
    markers = tmp_path / "markers"
    return run, markers, booby_trap(run, markers)


def test_the_traps_are_live(foreign):
    """Unpickling any of them (what a careless loader would do) fires its marker."""
    run, markers, traps = foreign
    gepa = next(p for p in traps if p.name == "gepa_state.bin")
    opt = next(p for p in traps if p.name == "optimizer.pt")
    code = ("import pickle, sys, torch\n"
            f"pickle.load(open({str(gepa)!r}, 'rb'))\n"
            f"torch.load({str(opt)!r}, weights_only=False)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(fired(markers)) == 2, fired(markers)


def test_pure_loaders_and_report_never_unpickle(foreign):
    from fst_lab import report
    from fst_lab.runs import list_runs, load_run

    run, markers, _ = foreign
    assert run in list_runs(run.parent)
    view = load_run(run, root=run.parent)
    hs = view.all_harnesses()
    assert hs and view.seed_harness() is not None
    assert view.population() and view.best_harness() is not None and view.population(1)
    assert view.lineage_edges() and view.cycles() == [1]
    assert view.latest_checkpoint() is not None and view.series("slow", "reward")[0]
    assert view.rollouts()
    rows = report.summary_rows([run])
    assert rows[0]["rl_steps"] == 1
    assert not fired(markers)


def test_app_logic_and_trained_weights_never_unpickle(foreign):
    from fst_lab import appkit as K
    from fst_lab.models import tiny_policy

    run, markers, _ = foreign
    cat = K.Catalog(run.parent)
    assert cat.run_names() == ["theirs"]
    view = cat.open_run("theirs")
    K.run_summary(view), K.config_yaml(view), K.curve_figures(view)
    K.lineage_tree(view.lineage_edges(), population=view.state["population"], scores=view.state.get(
        "population_scores"))
    cache = K.PolicyCache(lambda name: tiny_policy(seed=0))
    pol, notice = cache.for_run(view, "trained")  # base + the checkpoint's safetensors adapter, via PEFT
    assert "weights: trained" in notice, notice
    assert pol is not None
    # without the safetensors file, only the trapped adapter_model.bin is left: it is not loaded either
    ck = view.latest_checkpoint()
    (ck / "adapter_model.safetensors").unlink()
    pol2, notice2 = K.PolicyCache(lambda name: tiny_policy(seed=0)).for_run(view, "trained")
    assert "base weights" in notice2, notice2
    assert not fired(markers)


def _free_port() -> int:
    with socket.socket() as sck:
        sck.bind(("127.0.0.1", 0))
        return sck.getsockname()[1]


def test_the_app_over_http_never_unpickles(foreign):
    try:
        import app as app_module
    except ImportError as e:  # pragma: no cover
        pytest.skip(f"app.py is not importable ({e})")
    from gradio_client import Client

    from fst_lab.models import tiny_policy
    from fst_lab.runs import load_run

    run, markers, _ = foreign
    view = load_run(run)
    seed = view.seed_harness()
    best = view.best_harness()
    demo = app_module.build_app(run.parent, policy_factory=lambda name: tiny_policy(seed=0))
    port = _free_port()
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        client.predict(api_name="/list_runs")
        client.predict("theirs", api_name="/select_run")
        client.predict("theirs", "latest", api_name="/lineage")
        client.predict("theirs", api_name="/curves")
        client.predict("theirs", f"run:{seed.id}", f"run:{best.id}", api_name="/diff")
        ex_id = "math-L1-s0-val-0000"
        *_, notice = client.predict("theirs", "latest", f"run:{seed.id}", f"run:{best.id}", "trained", "math", ex_id,
                                    "2+2?", 8, 0.0, api_name="/arena")
        assert "trained" in notice, notice
    finally:
        demo.close()
    assert not fired(markers)


def test_resuming_a_foreign_run_refuses_pickled_checkpoint_state(foreign):
    from fst_lab.models import tiny_policy
    from fst_lab.session import Session

    run, markers, _ = foreign
    with pytest.raises(Exception) as ei:  # torch.load(weights_only=True) refuses builtins.exec
        Session.resume(run, policy=tiny_policy(seed=0), progress=False)
    assert "exec" in str(ei.value) or "weights_only" in str(ei.value) or "Unpickl" in repr(ei.value), ei.value
    assert not fired(markers)


def test_gepa_state_is_never_loaded_even_on_resume(real_run, tmp_path):
    """Resume one's own run with a trapped GEPA state left in the next round's directory: the fast step
    starts a fresh GEPA run and moves the leftover aside, unread."""
    from fst_lab.models import tiny_policy
    from fst_lab.session import Session

    run = tmp_path / "mine"
    shutil.copytree(real_run, run)
    markers = tmp_path / "markers"
    markers.mkdir()
    old = plant(run / "fast" / "round_0001" / "gepa_state.bin", markers)
    nxt = plant(run / "fast" / "round_0002" / "gepa_state.bin", markers)
    trap = nxt.read_bytes()
    s = Session.resume(run, policy=tiny_policy(seed=0), progress=False)
    assert not fired(markers)
    res = s.fast_step()
    s.weights.close()
    assert res.round == 2 and not fired(markers)
    stale = run / "fast" / "round_0002.stale-1" / "gepa_state.bin"
    assert stale.read_bytes() == trap, "the leftover GEPA state was moved aside untouched"
    fresh = run / "fast" / "round_0002" / "gepa_state.bin"
    assert fresh.exists() and fresh.read_bytes() != trap, "GEPA wrote its own, fresh state"
    assert old.exists() and not fired(markers)


def test_booby_trapped_yaml_is_refused(foreign):
    from fst_lab.harness import Harness, HarnessError
    from fst_lab.runs import RunDirError, load_run

    run, markers, _ = foreign
    marker = markers / "yaml.fired"
    evil = f"!!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w').write('x')\"]\n"
    h = next((run / "harnesses" / "all").glob("*.yaml"))
    h.write_text("schema_version: 1\nname: evil\nsystem_prompt: " + evil + "task_template: '{question}'\n")
    with pytest.raises(HarnessError, match="invalid YAML"):
        Harness.load(h)
    assert load_run(run).all_harnesses() is not None  # skipped, not run
    (run / "populations" / "cycle_0001.yaml").write_text("members: " + evil)
    with pytest.raises(yaml.YAMLError):
        load_run(run).population_record(1)
    (run / "config.yaml").write_text("mode: " + evil)
    with pytest.raises(RunDirError, match="config.yaml"):
        load_run(run)
    assert not marker.exists() and not fired(markers)


def test_known_bug_harness_alias_bomb_is_refused_quickly(tmp_path):
    levels = ["a0: &a0 [" + ",".join(['"lol"'] * 9) + "]"]
    for i in range(1, 9):
        levels.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    props = "\n".join("        " + ln for ln in levels)
    text = ("schema_version: 1\nname: bomb\nsystem_prompt: hi\ntask_template: '{question}'\ntools:\n- type: function\n"
            "  function:\n    name: f\n    description: d\n    parameters:\n      type: object\n      properties:\n"
            + props + "\n")
    p = tmp_path / "bomb.yaml"
    p.write_text(text)
    code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
            "from fst_lab.harness import Harness, HarnessError\n"
            f"try:\n    Harness.load({str(p)!r})\nexcept HarnessError as e:\n    print('refused:', e)\n")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        pytest.fail("loading a 1 KB harness file took more than 20 s")
    assert r.returncode == 0 and "refused" in r.stdout, (r.stdout, r.stderr[-500:])
