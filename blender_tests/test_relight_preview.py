"""2D relight preview of an import: operator == core Relighter, the stored maps survive save and reload, errors
leave the scene unchanged. Which import the tools use: the import's record follows renames, append and link."""

import math
from dataclasses import replace
from pathlib import Path

import bpy
import numpy as np
import pytest
from invrender_addon.build.bpy_io import image_to_array
from invrender_addon.build.import_photo import ImportSettings, import_photo
from invrender_addon.build.scene import (
    DATA_COLLECTIONS,
    IMPORT_KEY,
    RECORD_BLOCKS,
    SceneAssets,
    build_scene,
    find_import,
    stored_estimate,
)
from invrender_addon.operators import relight_preview

from invrender_core import geometry, sh
from invrender_core.camera import Camera
from invrender_core.nets import shadow_refine
from invrender_core.relight import DEFAULT_SHADOW_REFINER, DEFAULT_SHADOW_SAMPLES, DEFAULT_SUN_TO_SKY, Relighter
from invrender_core.scene import scene_assets
from invrender_core.train.synthetic import exact_estimate

# Camera-frame lighting: a sun from the upper right, in front of the camera, over a dim sky.
SUN_CAMERA = np.array([0.6, 0.6, 0.5]) / np.linalg.norm([0.6, 0.6, 0.5])
LIGHT = sh.directional(SUN_CAMERA, [2.5, 2.4, 2.2])
LIGHT[0] += [0.35, 0.4, 0.5]
LIGHT[1] += [0.1, 0.1, 0.12]
SUN_FRACTION = 0.8  # not the default: the import's sun share must reach the preview
SETTINGS = ImportSettings(photo=Path("yard.png"), sun_fraction=SUN_FRACTION)
PREVIEW = "yard 2D Relight"
SKY_ROWS = 5


def yard_estimate():
    """A 48x32 exact estimate of a sphere resting on a ground plane (it casts shadows), a checkered albedo, a
    shadow map, the top rows marked as sky and one pixel of unknown fused depth."""
    camera = Camera.from_fov(48, 32, 50.0)
    n = np.array([0.0, 1.0, 0.5]) / np.linalg.norm([0.0, 1.0, 0.5])
    foot = np.array([0.0, -0.4, -3.2])
    depth, normals, _ = geometry.synthetic_sphere_plane(camera, centre=foot + 0.6 * n, radius=0.6,
                                                        plane_normal=n, plane_offset=float(n @ foot))
    u, v = camera.pixel_grid()
    checker = ((u // 6 + v // 6) % 2).astype(np.float32)
    albedo = np.stack([0.3 + 0.4 * checker, 0.5 * np.ones_like(checker), 0.6 - 0.3 * checker], -1)
    shadow = np.clip(0.5 + 0.02 * u, 0.0, 1.0).astype(np.float32)
    est = exact_estimate(camera, depth, normals, LIGHT, albedo, shadow=shadow)
    est.sky = np.zeros(depth.shape, bool)
    est.sky[:SKY_ROWS] = True
    est.depth_fused = est.depth.copy()
    est.depth_fused[:SKY_ROWS] = 60.0  # the sky is far
    est.depth_fused[20, 7] = np.nan  # unknown: stored as 0, unknown to the preview as well
    return est


def through_property(degrees: float) -> float:
    """The angle as the operator sees it: radians in a float32 property (a sun direction a hair away from the
    float64 one can flip a borderline shadow sample)."""
    return math.degrees(float(np.float32(math.radians(degrees))))


def core_relight(est, elevation, azimuth, samples=DEFAULT_SHADOW_SAMPLES, sun_to_sky=DEFAULT_SUN_TO_SKY):
    """The core API's relight for the operator's angles (degrees), shadows refined by the shipped refiner."""
    relighter = Relighter(est, sun_fraction=SUN_FRACTION, shadow_samples=samples, sun_to_sky=sun_to_sky,
                          shadow_refine=shadow_refine.load(DEFAULT_SHADOW_REFINER))
    return relighter.render(relighter.sun_at(through_property(elevation), through_property(azimuth)))


def preview(elevation, azimuth, **options):
    return bpy.ops.invr.relight_preview(sun_elevation=math.radians(elevation), sun_azimuth=math.radians(azimuth),
                                        **options)


def counts():
    return {kind: len(getattr(bpy.data, kind)) for kind in DATA_COLLECTIONS}


def test_operator_equals_core_relighter(registered_addon, clean_scene):
    est = yard_estimate()
    import_photo(SETTINGS, clean_scene, estimate_result=est)
    assert preview(30.0, 120.0) == {"FINISHED"}
    image = bpy.data.images[PREVIEW]
    assert image.is_float and image.colorspace_settings.name == "Linear Rec.709"  # linear like the photo
    assert image.packed_file is not None
    expected = core_relight(est, 30.0, 120.0)
    assert (expected.visibility < 0.5).sum() > 10  # the sphere casts a shadow: the test sees visibility
    assert np.abs(expected.image - est.image).max() > 0.1  # and the relight changes the photo
    np.testing.assert_allclose(image_to_array(image), expected.image, rtol=1e-5, atol=1e-6)

    # A second preview (cached relighter) updates the same datablock, with its own shadow samples and sun.
    before = counts()
    assert preview(60.0, -45.0, shadow_samples=2, sun_to_sky=9.0) == {"FINISHED"}
    assert counts() == before and bpy.data.images[PREVIEW] is not None
    np.testing.assert_allclose(image_to_array(bpy.data.images[PREVIEW]),
                               core_relight(est, 60.0, -45.0, 2, sun_to_sky=9.0).image, rtol=1e-5, atol=1e-6)


def test_without_pytorch_the_shadows_are_as_marched_with_a_warning(registered_addon, clean_scene, capfd,
                                                                     monkeypatch):
    from invrender_addon import deps

    est = yard_estimate()
    import_photo(SETTINGS, clean_scene, estimate_result=est)
    monkeypatch.setattr(deps, "torch_status", lambda load=False: deps.TorchStatus())  # not installed
    capfd.readouterr()
    assert preview(30.0, 120.0) == {"FINISHED"}
    assert "PyTorch is not available: cast shadows as marched" in capfd.readouterr().out
    relighter = Relighter(est, sun_fraction=SUN_FRACTION)
    expected = relighter.render(relighter.sun_at(through_property(30.0), through_property(120.0)))
    assert np.abs(expected.image - core_relight(est, 30.0, 120.0).image).max() > 0.01  # the refiner shows
    np.testing.assert_allclose(image_to_array(bpy.data.images[PREVIEW]), expected.image, rtol=1e-5, atol=1e-6)


def test_save_reload_keeps_what_the_preview_needs(registered_addon, clean_scene, tmp_path):
    est = yard_estimate()
    import_photo(SETTINGS, clean_scene, estimate_result=est)
    assert preview(20.0, 200.0) == {"FINISHED"}
    first = image_to_array(bpy.data.images[PREVIEW])
    (cached,) = relight_preview._RELIGHTERS.values()
    path = tmp_path / "moved" / "yard.blend"
    path.parent.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=str(path))

    # The maps, lighting and camera come back exactly (unknown depth as 0, normals through their encoding).
    stored = stored_estimate(find_import(bpy.context.scene).collection)
    np.testing.assert_array_equal(stored.image, est.image)
    np.testing.assert_array_equal(stored.albedo, est.albedo)
    np.testing.assert_allclose(stored.normals, est.normals, atol=1e-6)
    np.testing.assert_array_equal(stored.depth_fused, np.nan_to_num(est.depth_fused, nan=0.0))
    np.testing.assert_array_equal(stored.sky, est.sky)
    np.testing.assert_array_equal(stored.shadow, est.shadow)
    np.testing.assert_array_equal(stored.lighting, est.lighting)
    assert stored.camera == est.camera and stored.metadata["sun_fraction"] == SUN_FRACTION

    assert np.array_equal(image_to_array(bpy.data.images[PREVIEW]), first)  # the last preview was saved too
    assert preview(20.0, 200.0) == {"FINISHED"}
    assert relight_preview._RELIGHTERS[next(iter(relight_preview._RELIGHTERS))] is not cached  # rebuilt from file
    np.testing.assert_allclose(image_to_array(bpy.data.images[PREVIEW]), first, rtol=1e-6, atol=1e-7)
    assert len([i for i in bpy.data.images if i.name.startswith(PREVIEW)]) == 1


def test_disabling_the_add_on_frees_the_cached_relighter(clean_scene):
    import invrender_addon

    invrender_addon.register()
    try:
        import_photo(SETTINGS, clean_scene, estimate_result=yard_estimate())
        assert preview(30.0, 120.0) == {"FINISHED"} and relight_preview._RELIGHTERS
    finally:
        invrender_addon.unregister()
    assert relight_preview._RELIGHTERS == {}


def test_no_import_reports_and_changes_nothing(registered_addon, clean_scene):
    before = counts()
    with pytest.raises(RuntimeError, match="no InvRender import"):  # bpy.ops turns an ERROR report into this
        preview(30.0, 90.0)
    assert counts() == before


def test_import_without_stored_maps_reports_and_changes_nothing(registered_addon, clean_scene):
    # Built from the core's assets alone (as before the preview existed): no fused depth, no lighting kept.
    build_scene(SceneAssets(**scene_assets(yard_estimate(), "old", environment_height=16)), clean_scene)
    before = counts()
    with pytest.raises(RuntimeError, match="depth, lighting_camera.*import the photo again"):
        preview(30.0, 90.0)
    assert counts() == before

    # A full import whose depth image was deleted.
    bpy.ops.wm.read_factory_settings(use_empty=True)
    built = import_photo(SETTINGS, bpy.context.scene, estimate_result=yard_estimate())
    bpy.data.images.remove(built.collection[IMPORT_KEY]["depth"])
    before = counts()
    with pytest.raises(RuntimeError, match="the depth image of 'yard' is missing: import the photo again"):
        preview(30.0, 90.0)
    assert counts() == before and PREVIEW not in bpy.data.images


def test_defaults_and_names(registered_addon):
    rna = bpy.ops.invr.relight_preview.get_rna_type().properties
    assert rna["shadow_samples"].default == DEFAULT_SHADOW_SAMPLES
    assert rna["sun_to_sky"].default == DEFAULT_SUN_TO_SKY
    assert bpy.ops.invr.relight.get_rna_type().properties["sun_to_sky"].default == DEFAULT_SUN_TO_SKY
    name = relight_preview.preview_image_name("é" * 40)  # 80 bytes of name: too long for a datablock
    assert name.endswith(" 2D Relight") and len(name.encode()) <= 63
    image = bpy.data.images.new(name, 4, 4)
    assert image.name == name  # Blender keeps it whole, so the next preview finds it again


# ----------------------------------------------------------------------------- which import the tools use


PLACE_SUN = {"use_sun_angles": True, "sun_elevation": math.radians(20.0), "sun_azimuth": math.radians(150.0)}


def sun_state(sun) -> tuple:
    return tuple(sun.rotation_euler), sun.data.energy


def test_tools_follow_renamed_datablocks(registered_addon, clean_scene):
    est = yard_estimate()
    import_photo(SETTINGS, clean_scene, estimate_result=est)
    for kind in ("objects", "worlds", "images", "meshes", "cameras", "lights"):  # as an artist tidies the Outliner
        for block in list(getattr(bpy.data, kind)):
            block.name = f"shot {block.name}"
    sun = bpy.data.objects["shot yard sun"]
    before = sun_state(sun)
    assert bpy.ops.invr.relight(**PLACE_SUN) == {"FINISHED"}
    assert sun_state(sun) != before
    assert bpy.ops.invr.add_novel_view_camera() == {"FINISHED"}
    assert preview(30.0, 120.0) == {"FINISHED"}
    np.testing.assert_allclose(image_to_array(bpy.data.images[PREVIEW]), core_relight(est, 30.0, 120.0).image,
                               rtol=1e-5, atol=1e-6)


def test_records_of_earlier_versions_name_their_datablocks(registered_addon, clean_scene):
    est = yard_estimate()
    record = import_photo(SETTINGS, clean_scene, estimate_result=est).collection[IMPORT_KEY]
    for key in RECORD_BLOCKS.keys() & record.keys():  # as add-on versions before ID references wrote it
        record[key] = record[key].name
    assert isinstance(record["world"], str)
    sun = bpy.data.objects["yard sun"]
    before = sun_state(sun)
    assert bpy.ops.invr.relight(**PLACE_SUN) == {"FINISHED"} and sun_state(sun) != before
    assert preview(30.0, 120.0) == {"FINISHED"}
    np.testing.assert_allclose(image_to_array(bpy.data.images[PREVIEW]), core_relight(est, 30.0, 120.0).image,
                               rtol=1e-5, atol=1e-6)


def save_import(path: Path) -> None:
    """A .blend with an import of the yard at `path`; then Blender's empty scene again."""
    import_photo(SETTINGS, bpy.context.scene, estimate_result=yard_estimate())
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.read_factory_settings(use_empty=True)


def load_import(path: Path, link: bool) -> bpy.types.Collection:
    """The yard's import collection (and its world) linked or appended from `path` into the scene."""
    with bpy.data.libraries.load(str(path), link=link) as (_, data):
        data.collections, data.worlds = ["yard"], ["yard world"]
    bpy.context.scene.collection.children.link(data.collections[0])
    bpy.context.scene.world = data.worlds[0]
    return data.collections[0]


def test_appended_import_next_to_an_import_of_the_same_photo(registered_addon, clean_scene, tmp_path):
    save_import(tmp_path / "shot.blend")
    import_photo(SETTINGS, bpy.context.scene, estimate_result=yard_estimate())
    host_sun = bpy.data.objects["yard sun"]
    host = sun_state(host_sun)
    appended = load_import(tmp_path / "shot.blend", link=False)  # its datablocks get ".001" names
    assert bpy.context.scene.world.name == "yard world.001"
    assert bpy.ops.invr.relight(**PLACE_SUN) == {"FINISHED"}
    assert sun_state(host_sun) == host  # the host file's own import is left alone
    built = find_import(bpy.context.scene)
    assert built.collection == appended and built.sun.name == "yard sun.001" and sun_state(built.sun) != host


def test_linked_import_is_refused_where_it_would_change(registered_addon, clean_scene, tmp_path):
    save_import(tmp_path / "shot.blend")
    load_import(tmp_path / "shot.blend", link=True)
    sun = bpy.data.objects["yard sun"]
    before = (sun_state(sun), len(bpy.context.scene.world.node_tree.nodes), counts())
    message = r"the import 'yard' is linked from .*shot\.blend: relight and add views in that file, or make it local"
    for operator in (lambda: bpy.ops.invr.relight(**PLACE_SUN), lambda: bpy.ops.invr.relight(animate=True),
                     bpy.ops.invr.add_novel_view_camera):
        with pytest.raises(RuntimeError, match=message):
            operator()
    assert (sun_state(sun), len(bpy.context.scene.world.node_tree.nodes), counts()) == before
    # The 2D preview only reads the import's maps (linked along with it) and writes an image of this file.
    assert preview(30.0, 120.0) == {"FINISHED"}
    np.testing.assert_allclose(image_to_array(bpy.data.images[PREVIEW]),
                               core_relight(yard_estimate(), 30.0, 120.0).image, rtol=1e-5, atol=1e-6)


def test_an_import_the_scene_world_does_not_name_is_said_or_refused(registered_addon, clean_scene, capfd):
    import_photo(SETTINGS, clean_scene, estimate_result=yard_estimate())
    clean_scene.world = bpy.data.worlds.new("artist")
    sun = bpy.data.objects["yard sun"]
    before = sun_state(sun)
    capfd.readouterr()
    assert bpy.ops.invr.relight(**PLACE_SUN) == {"FINISHED"} and sun_state(sun) != before
    assert "the scene's world (artist) is not the import's: using 'yard', the only import; its lighting shows " \
           "with the world 'yard world'" in capfd.readouterr().out  # the WARNING report

    # With two imports, neither's world in use: which one the artist means is not guessed.
    import_photo(replace(SETTINGS, photo=Path("court.png")), clean_scene, estimate_result=yard_estimate())
    clean_scene.world = bpy.data.worlds["artist"]
    before = (sun_state(sun), sun_state(bpy.data.objects["court sun"]), counts())
    with pytest.raises(RuntimeError, match=r"the scene's world \(artist\) belongs to none of the InvRender imports "
                       r"\(yard, court\): set the scene's world to the world of the import to use"):
        bpy.ops.invr.relight(**PLACE_SUN)
    assert (sun_state(sun), sun_state(bpy.data.objects["court sun"]), counts()) == before
