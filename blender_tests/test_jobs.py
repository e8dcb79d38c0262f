"""The worker-thread job that keeps long work off Blender's main thread."""

import threading

import pytest
from invrender_addon import jobs


@pytest.fixture(autouse=True)
def no_job_left():
    yield
    job = jobs.active_job()
    if job is not None:
        job.cancel()
        job.wait(10)
        jobs.release(job)


def test_progress_and_result_reach_the_main_thread():
    seen = []
    go = threading.Event()

    def work(progress, cancel):
        progress("first", 0.25)
        go.wait(5)
        progress("second", 0.75)
        return 42

    job = jobs.start(work, "test")
    assert jobs.active_job() is job
    while job.poll() == jobs.RUNNING and job.stage != "first":
        seen.append(job.stage)
    assert (job.stage, job.fraction, job.state) == ("first", 0.25, jobs.RUNNING)
    go.set()
    assert job.wait(5) == jobs.FINISHED
    assert (job.result, job.fraction, job.error) == (42, 1.0, None)
    jobs.release(job)
    assert jobs.active_job() is None


def test_an_exception_is_a_failure_and_a_cancelled_exception_a_cancel():
    def fails(progress, cancel):
        raise ValueError("bad photo")

    job = jobs.start(fails, "failing")
    assert job.wait(5) == jobs.FAILED and str(job.error) == "bad photo" and job.result is None
    jobs.release(job)

    def waits_for_cancel(progress, cancel):
        assert cancel.wait(5)
        raise RuntimeError("stopped")

    job = jobs.start(waits_for_cancel, "cancellable")
    assert "Esc to cancel" in job.status_text
    job.cancel()
    assert job.wait(5) == jobs.CANCELLED


def test_one_job_at_a_time():
    release = threading.Event()
    job = jobs.start(lambda progress, cancel: release.wait(5), "long")
    with pytest.raises(RuntimeError, match="still running"):
        jobs.start(lambda progress, cancel: None, "second")
    release.set()
    assert job.wait(5) == jobs.FINISHED
    second = jobs.start(lambda progress, cancel: "ok", "second")  # a finished job does not block the next
    assert second.wait(5) == jobs.FINISHED and second.result == "ok"
