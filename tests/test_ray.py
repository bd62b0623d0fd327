"""``backtrack eval --ray``: a local Ray (2 CPUs) started inside the test, the tiny model.

The records of a Ray run equal a local run's token for token (batch size 1, fp32: the actor
decodes each cell exactly as the local engine does), even when an actor is killed mid-chunk:
its chunk is decoded again and every cell is written once.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from backtrack.evaluation.generation.runner import prepare, run_eval
from backtrack.evaluation.settings import EvalError, EvalSettings
from backtrack.evaluation.store import ResultStore

ray = pytest.importorskip("ray")

FIELDS = ("completion", "raw_completion", "final_tokens", "forward_passes", "backtracks", "passed")


def _settings(out, **changes) -> EvalSettings:
    values = dict(
        model="tiny-random-qwen2",
        out=str(out),
        operators=["chaos:p=0.3,max=3,seed=1"],
        dataset="humaneval",
        limit=6,
        runs=1,
        dtype="float32",
        backend="transformers",
        batch_size=1,
        max_new_tokens=40,
    )
    values.update(changes)
    return EvalSettings.from_flat(values)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _cells(out) -> dict:
    records, problems = ResultStore(out).load()
    assert not problems
    cells = {}
    for r in records:
        key = (r["config"], r["run"], r["task_id"])
        assert key not in cells, f"duplicate record {key}"
        cells[key] = {f: r[f] for f in FIELDS}
    return cells


def test_ray_records_equal_local_ones_even_when_an_actor_dies(tiny, local_ray, tmp_path):
    from backtrack.evaluation.generation.distributed import RayPool

    model, tokenizer = tiny
    run_eval(_settings(tmp_path / "local"), model, tokenizer, progress=False)
    expected = _cells(tmp_path / "local")
    assert len(expected) == 12

    settings = _settings(tmp_path / "ray", ray="local", ray_actors=2)
    pool = RayPool(settings, "local", actors=2)
    victim = pool.pids()[0]
    killed = threading.Event()

    def kill_mid_chunk() -> None:
        # Right after the first chunk comes back, both actors hold a chunk (the pool feeds
        # the idle one before handing results over): kill one while it decodes.
        while pool.decoded_chunks < 1:
            time.sleep(0.005)
        os.kill(victim, signal.SIGKILL)
        killed.set()

    killer = threading.Thread(target=kill_mid_chunk, daemon=True)
    killer.start()
    try:
        summary = run_eval(settings, progress=False, pool=pool)
    finally:
        pool.close()
    killer.join(timeout=5)
    assert killed.is_set() and pool.requeued > 0, "the killed actor was not decoding"
    assert summary.written == 12
    assert _cells(tmp_path / "ray") == expected


def test_ray_refuses_transformers_baselines(tmp_path):
    settings = _settings(tmp_path / "x", ray="local", baselines=["beam:2"])
    with pytest.raises(EvalError, match="engine configurations only"):
        prepare(settings)


def test_tune_trials_decode_on_the_pool(local_ray, shared_data, tmp_path):
    import optuna

    from backtrack.tuning.settings import TuneSettings
    from backtrack.tuning.study import run_search

    settings = TuneSettings(
        out=str(tmp_path / "study"),
        data_path=str(shared_data / "mbpp" / "mbpp_release_v1.jsonl"),
        model="tiny-random-qwen2",
        backend="transformers",
        dtype="float32",
        trials=2,
        rungs=(2,),
        operators=("probability-trend", "never"),
        batch_size=2,
        max_new_tokens=12,
        max_forward_per_token=3.0,
        ray="local",
        ray_actors=2,
    )
    study = run_search(settings, progress=False)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    cells = _cells(tmp_path / "study" / "train")
    assert sum(1 for key in cells if key[0] == "base") == 2  # decoded once, on the pool
