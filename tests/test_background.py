"""A pipeline step run beside another (`simrec.background`): a real spawned child process."""

from __future__ import annotations

import os
import time

import pytest

from simrec.background import BackgroundStep, BackgroundStepError
from simrec.progress import progress


def _where_and_how(value: int) -> dict[str, object]:
    bar = progress(range(3))
    return {
        "pid": os.getpid(),
        "doubled": value * 2,
        "policy": os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None,
        "niceness": os.nice(0),
        "bar_disabled": bar.disable,
    }


def _fails() -> None:
    raise ValueError("no rooms in the catalog")


def _dies() -> None:
    os._exit(3)


def _sleeps() -> None:
    time.sleep(120)


def test_the_step_runs_in_another_process_and_its_value_comes_back() -> None:
    with BackgroundStep("doubling", _where_and_how, 21, priority="normal") as step:
        answer = step.result()
    assert answer["doubled"] == 42
    assert answer["pid"] != os.getpid()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux only")
def test_the_step_runs_at_idle_priority_and_draws_no_progress_bar() -> None:
    with BackgroundStep("doubling", _where_and_how, 1, priority="idle") as step:
        answer = step.result()
    assert answer["policy"] == os.SCHED_IDLE
    assert answer["bar_disabled"] is True
    assert progress(range(3)).disable is False  # bars stay on in the parent


def test_nice_priority_is_the_fallback() -> None:
    with BackgroundStep("doubling", _where_and_how, 1, priority="nice") as step:
        answer = step.result()
    assert answer["niceness"] == 19


def test_an_error_in_the_step_comes_back_with_its_traceback() -> None:
    step = BackgroundStep("style build", _fails, priority="normal")
    with step, pytest.raises(BackgroundStepError) as raised:
        step.result()
    message = str(raised.value)
    assert "style build failed in the background" in message
    assert "ValueError: no rooms in the catalog" in message
    assert "_fails" in message  # the child's traceback, not the parent's


def test_a_child_that_dies_is_reported_not_waited_for_forever() -> None:
    step = BackgroundStep("style build", _dies, priority="normal")
    with step, pytest.raises(BackgroundStepError, match="died .*exit code 3"):
        step.result()


def test_leaving_the_block_early_stops_the_child() -> None:
    started = time.perf_counter()
    step = BackgroundStep("sleeper", _sleeps, priority="normal")
    with pytest.raises(RuntimeError, match="training failed"), step:
        raise RuntimeError("training failed")
    assert not step._process.is_alive()
    assert time.perf_counter() - started < 60


def _thread_limits() -> dict[str, object]:
    import tensorflow as tf
    from threadpoolctl import threadpool_info

    return {
        "blas": sorted({pool["num_threads"] for pool in threadpool_info()}),
        "tensorflow": tf.config.threading.get_intra_op_parallelism_threads(),
    }


def test_threads_are_capped_in_the_child() -> None:
    with BackgroundStep("capped", _thread_limits, priority="normal", threads=1) as step:
        answer = step.result()
    assert answer == {"blas": [1], "tensorflow": 1}
