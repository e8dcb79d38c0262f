"""Tests that run real Blender through the bpy module (headless)."""

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
