"""Tests that run real Blender through the bpy module (headless)."""

import time

import pytest

bpy = pytest.importorskip("bpy")


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
