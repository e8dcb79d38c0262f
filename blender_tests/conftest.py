"""Tests that run real Blender through the bpy module (headless)."""

import os
import shutil
import sys
import time

import pytest

bpy = pytest.importorskip("bpy")

_exit_status = None  # pytest's, kept for pytest_unconfigure


def pytest_sessionfinish(session, exitstatus):
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the process once pytest has reported. bpy 4.x can hang for ever after Python's finalization: a C++
    static destructor destroys a condition variable that bpy's own sound-device thread (delayed_close_thread_run)
    still waits on, when something kept the bpy module alive through the interpreter's teardown (seen with
    `pytest blender_tests/test_import_photo.py blender_tests/test_face_cli.py blender_tests/test_novel_view.py`:
    33 passed, then no exit). Blender's session temporary folder, which its own exit removes, goes first."""
    if _exit_status is None:  # pytest stopped before running a session
        return
    shutil.rmtree(bpy.app.tempdir, ignore_errors=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status)


@pytest.fixture(autouse=True)
def clean_scene():
    """Every test starts from Blender's empty factory scene."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield bpy.context.scene


@pytest.fixture
def registered_addon():
    """The add-on registered as Blender registers an enabled add-on, unregistered after the test."""
    import invrender_addon

    invrender_addon.register()
    yield
    invrender_addon.unregister()


class ReportRecorder:
    """Stands in for an operator's `report` so the worker path can run outside a modal operator."""

    def __init__(self):
        self.reports = []

    def report(self, kinds, message):
        self.reports.append((set(kinds), message))


@pytest.fixture
def report_recorder():
    return ReportRecorder()


@pytest.fixture
def poll_job():
    """Poll a jobs.Job until its worker ended, as a modal operator's timer does; returns the stages it reported."""
    from invrender_addon import jobs

    def poll(job) -> set[str]:
        stages = set()
        while job.poll() == jobs.RUNNING:
            stages.add(job.stage)
            time.sleep(0.005)
        return stages

    return poll
