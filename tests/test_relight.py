"""invrender_core.relight: sun directions, cast shadows against ray-cast truth, relighting round trips."""

import math

import numpy as np
import pytest

from invrender_core import geometry, relight, sh
from invrender_core.camera import Camera
from invrender_core.scene import SceneEstimate, sun_direction

CAMERA = Camera.from_fov(128, 96, 60.0)
SPHERE_CENTRE = np.array([0.1, -0.3, -3.5])
SPHERE_RADIUS = 0.8
GROUND_NORMAL = np.array([0.0, 0.6, 0.8])  # a ground plane seen from above, the sphere resting on it
GROUND_OFFSET = float(GROUND_NORMAL @ SPHERE_CENTRE) - SPHERE_RADIUS


def sphere_on_ground():
    return geometry.synthetic_sphere_plane(CAMERA, centre=SPHERE_CENTRE, radius=SPHERE_RADIUS,
                                           plane_normal=GROUND_NORMAL, plane_offset=GROUND_OFFSET)


def true_sphere_shadow(depth, on_sphere, direction):
    """Ground pixels whose ray towards the sun hits the sphere (exact ray-sphere test)."""
    points = geometry.backproject(depth, CAMERA)
    oc = points - SPHERE_CENTRE
    b = oc @ direction
    disc = b * b - ((oc * oc).sum(-1) - SPHERE_RADIUS**2)
    far_hit = -b + np.sqrt(np.maximum(disc, 0.0))
    return (disc > 0) & (far_hit > 1e-3) & ~on_sphere


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


# ------------------------------------------------------------------------------------------ directions


@pytest.mark.parametrize(("elevation", "azimuth", "expected"), [
    (0.0, 0.0, (0.0, 0.0, 1.0)),  # behind the camera
    (0.0, 90.0, (1.0, 0.0, 0.0)),  # to the right
    (0.0, 180.0, (0.0, 0.0, -1.0)),  # in front
    (90.0, 37.0, (0.0, 1.0, 0.0)),  # overhead
])
def test_sun_direction_camera_for_a_level_camera(elevation, azimuth, expected):
    np.testing.assert_allclose(relight.sun_direction_camera(elevation, azimuth), expected, atol=1e-12)


def test_sun_direction_camera_agrees_with_the_scene_builder_world_frame():
    for elevation, azimuth in ((30.0, 110.0), (65.0, -40.0), (5.0, 250.0)):
        world = sun_direction(elevation, azimuth)
        np.testing.assert_allclose(sh.CAMERA_TO_WORLD @ relight.sun_direction_camera(elevation, azimuth), world,
                                   atol=1e-12)


def test_sun_direction_camera_measures_elevation_from_the_given_up():
    tilt = math.radians(25.0)  # camera pitched down 25 degrees: the world's up leans towards the viewer
    up = np.array([0.0, math.cos(tilt), math.sin(tilt)])
    for elevation in (10.0, 45.0, 80.0):
        d = relight.sun_direction_camera(elevation, 60.0, up)
        assert np.linalg.norm(d) == pytest.approx(1.0)
        assert d @ up == pytest.approx(math.sin(math.radians(elevation)))


def test_sun_direction_camera_rejects_an_up_along_the_view():
    with pytest.raises(ValueError, match="viewing direction"):
        relight.sun_direction_camera(30.0, 0.0, up=(0.0, 0.0, 1.0))


# ------------------------------------------------------------------------------------------ lighting


def test_sun_and_lighting_check_their_values():
    with pytest.raises(ValueError, match="direction"):
        relight.Sun((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="irradiance"):
        relight.Sun((0.0, 1.0, 0.0), (1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match=r"\(9, 3\)"):
        relight.Lighting(sky=np.zeros((4, 3)))
    np.testing.assert_allclose(relight.Sun((0.0, 2.0, 0.0), 3.0).direction, (0.0, 1.0, 0.0))


def test_lighting_from_estimate_and_sh_round_trip():
    L = sh.directional(np.array([0.3, 0.8, 0.5]), (3.0, 2.5, 2.0))
    L[0] += 0.5
    split = relight.lighting_from_estimate(L, sun_fraction=0.6)
    np.testing.assert_allclose(split.sh(), L, atol=1e-12)
    assert split.sun is not None and split.sun.irradiance.min() > 0


def sphere_normals(n=2000):
    return sh._fibonacci_sphere(n).reshape(1, n, 3)


def test_observed_lighting_recovers_order_one_lighting_from_all_normals():
    L = np.zeros((9, 3))
    L[0], L[1], L[3] = (1.0, 0.9, 0.8), (0.2, 0.1, 0.0), (-0.1, 0.0, 0.1)
    np.testing.assert_allclose(sh.observed_lighting(sphere_normals(), L), L, atol=1e-5)


def test_observed_lighting_shrinks_towards_a_lighting_at_the_fits_own_level():
    """Shrinking towards the lighting the data came from changes nothing; weight 0 is the plain fit; weight 1 moves
    each coefficient part of the way, and a very strong weight all the way, to the other lighting's order-0/1 shape
    at the data's mean level."""
    L = np.zeros((9, 3))
    L[0], L[1], L[3] = (1.0, 0.9, 0.8), (0.2, 0.1, 0.0), (-0.1, 0.0, 0.1)
    toward = np.zeros((9, 3))
    toward[0], toward[2] = (2.0, 2.0, 2.0), (0.6, 0.6, 0.6)  # light from the camera's side, twice as bright
    normals = sphere_normals()
    np.testing.assert_allclose(sh.observed_lighting(normals, L, toward=L, weight=5.0), L, atol=1e-5)
    np.testing.assert_allclose(sh.observed_lighting(normals, L, toward=toward, weight=0.0), L, atol=1e-5)
    strong = sh.observed_lighting(normals, L, toward=toward, weight=1e6)
    np.testing.assert_allclose(strong[:4], toward[:4] * (L[0] / toward[0]), atol=1e-4)
    # Over the whole sphere the SH basis is orthogonal: the normal equations are diagonal, each coefficient's entry
    # proportional to its cosine lobe's factor squared (pi for order 0, 2 pi / 3 for order 1), and the ridge is
    # `weight` times their mean, so each coefficient moves towards the target by its own analytic fraction.
    moderate = sh.observed_lighting(normals, L, toward=toward, weight=1.0)
    lobe = (np.array([np.pi, 2 * np.pi / 3, 2 * np.pi / 3, 2 * np.pi / 3]) ** 2)[:, None]
    target = toward[:4] * (L[0] / toward[0])
    np.testing.assert_allclose(moderate[:4], (lobe * L[:4] + lobe.mean() * target) / (lobe + lobe.mean()), atol=1e-3)
    with pytest.raises(ValueError, match="positive mean"):
        sh.observed_lighting(normals, L, toward=-toward, weight=1.0)


def test_observed_lighting_of_wild_lighting_has_no_negative_radiance():
    L = np.zeros((9, 3))
    L[0], L[2], L[6], L[8] = 30.0, -15.0, -40.0, 90.0  # a real network estimate's kind of order-2 terms
    facing = sphere_normals()[:, sh._fibonacci_sphere(2000)[:, 2] > 0.3]  # normals the camera can see
    fitted = sh.observed_lighting(facing, L)
    assert np.all(fitted[4:] == 0.0)
    radiance = sh.radiance_basis(sh._fibonacci_sphere(500)) @ fitted
    assert radiance.min() >= -1e-9
    with pytest.raises(ValueError, match="too few"):
        sh.observed_lighting(facing[:, :2], L)


def test_move_sun_turns_the_sky_about_up_by_the_suns_change_of_azimuth():
    rng = np.random.default_rng(0)
    sky = rng.normal(size=(9, 3)) * 0.1
    sky[0] += 1.0
    up = np.array([0.0, 1.0, 0.0])
    start = relight.Lighting(sky=sky, sun=relight.Sun(relight.sun_direction_camera(60.0, 30.0), (2.0, 2.0, 2.0)))
    target = relight.sun_direction_camera(10.0, 120.0)  # lower, and turned 90 degrees about up
    moved = relight.move_sun(start, target, up)
    np.testing.assert_allclose(moved.sun.direction, target)
    np.testing.assert_allclose(moved.sun.irradiance, start.sun.irradiance)
    R = geometry.rotation_about(up, math.radians(90.0))
    horizontal = [d - (d @ up) * up for d in (start.sun.direction, target)]
    np.testing.assert_allclose(R @ horizontal[0] / np.linalg.norm(horizontal[0]),
                               horizontal[1] / np.linalg.norm(horizontal[1]), atol=1e-12)  # 30 -> 120 degrees
    for n in rng.normal(size=(5, 3)):  # the moved sky shades a turned normal as the old one shaded the normal
        n /= np.linalg.norm(n)
        np.testing.assert_allclose(sh.shading(R @ n, moved.sky), sh.shading(n, sky), atol=1e-9)
    for n in (up, -up):  # upright: the sky and the ground below keep their light, the sun's elevation aside
        np.testing.assert_allclose(sh.shading(n, moved.sky), sh.shading(n, sky), atol=1e-9)
    np.testing.assert_allclose(moved.sky[0], sky[0], atol=1e-12)  # rotations keep the DC term
    overhead = relight.move_sun(relight.Lighting(sky=sky, sun=relight.Sun(up, (1.0, 1.0, 1.0))), target, up)
    np.testing.assert_allclose(overhead.sky, sky, atol=1e-12)  # a sun overhead has no azimuth: the sky stays


# ------------------------------------------------------------------------------------------ cast shadows


@pytest.mark.parametrize("direction", [(0.28, 0.94, 0.19), (0.5, 0.5, 0.7), (-0.6, 0.7, 0.3)])
def test_cast_shadow_of_a_sphere_matches_ray_casting(direction):
    depth, _, on_sphere = sphere_on_ground()
    direction = np.asarray(direction) / np.linalg.norm(direction)
    truth = true_sphere_shadow(depth, on_sphere, direction)
    assert truth.sum() > 200  # the shadow falls in view
    visibility = relight.cast_shadow(depth, CAMERA, direction, samples=1, angle_deg=0.0)
    assert visibility.shape == depth.shape and visibility.dtype == np.float32
    assert iou((visibility < 0.5) & ~on_sphere, truth) > 0.75


def _box_distance(origins, direction, lo, hi):
    """Distance along rays (origins (..., 3), direction (3,) or (..., 3)) to an axis-aligned box; inf on a miss."""
    with np.errstate(divide="ignore"):
        t0, t1 = (lo - origins) / direction, (hi - origins) / direction
    near, far = np.minimum(t0, t1).max(axis=-1), np.maximum(t0, t1).min(axis=-1)
    return np.where(far >= np.maximum(near, 1e-6), np.maximum(near, 0.0), np.inf)


@pytest.mark.parametrize("direction", [(0.3, 0.87, -0.4), (0.0, 0.87, -0.5)])
def test_cast_shadow_of_a_building_cut_by_the_frame(direction):
    """A tower on the ground (x -1..1, depth 7..9, 12 m tall) leaves the frame at the top; the high sun behind it
    puts its shadow on the ground in front of it, where rays towards the sun leave the frame before they reach
    the tower: only the scene continued past the frame's edge casts that part of the shadow."""
    lo, hi = np.array([-1.0, -1.5, -9.0]), np.array([1.0, 12.0, -7.0])
    rays = CAMERA.rays()
    below_horizon = rays[..., 1] < 0
    ground = np.full(below_horizon.shape, np.inf)  # depth of the ground y = -1.5
    ground[below_horizon] = -1.5 / rays[below_horizon][:, 1]
    tower = _box_distance(np.zeros(3), rays, lo, hi)
    on_ground = ground < tower
    assert tower[0].min() < ground[0].min()  # the tower reaches the frame's top edge
    depth = np.minimum(ground, tower)
    depth = np.where(np.isfinite(depth), depth, np.nan)  # the sky: unknown depth
    direction = np.asarray(direction) / np.linalg.norm(direction)
    points = np.where(on_ground[..., None], depth[..., None] * rays, 0.0)
    truth = on_ground & np.isfinite(_box_distance(points, direction, lo, hi))
    assert truth.sum() > 1000
    continued = relight.cast_shadow(depth, CAMERA, direction, samples=1, angle_deg=0.0)
    cut = relight.cast_shadow(depth, CAMERA, direction, samples=1, angle_deg=0.0, beyond_frame=0.0)
    assert iou((continued < 0.5) & on_ground, truth) > 0.75
    assert iou((cut < 0.5) & on_ground, truth) < 0.5


def test_cast_shadow_of_a_bare_plane_is_empty():
    depth, _, _ = geometry.synthetic_sphere_plane(CAMERA, centre=(0.0, 0.0, 50.0), radius=0.1,
                                                  plane_normal=GROUND_NORMAL, plane_offset=GROUND_OFFSET)
    visibility = relight.cast_shadow(depth, CAMERA, np.array([0.3, 0.9, 0.3]))
    assert visibility.min() == 1.0


def test_cast_shadow_ignores_sky_and_unknown_depth():
    depth, _, on_sphere = sphere_on_ground()
    direction = np.array([0.28, 0.94, 0.19]) / np.linalg.norm([0.28, 0.94, 0.19])
    unknown = np.where(on_sphere, np.nan, depth)  # the sphere's depth unknown: nothing casts the shadow
    assert relight.cast_shadow(unknown, CAMERA, direction).min() == 1.0
    as_sky = relight.cast_shadow(depth, CAMERA, direction, sky=on_sphere)
    assert as_sky.min() == 1.0


def test_soft_shadows_have_penumbrae_and_hard_ones_do_not():
    depth, _, on_sphere = sphere_on_ground()
    direction = np.array([0.5, 0.5, 0.7]) / np.linalg.norm([0.5, 0.5, 0.7])
    hard = relight.cast_shadow(depth, CAMERA, direction, samples=1)
    soft = relight.cast_shadow(depth, CAMERA, direction, samples=16, angle_deg=8.0)
    assert set(np.unique(hard)) <= {0.0, 1.0}
    partial = (soft > 0.05) & (soft < 0.95) & ~on_sphere
    assert partial.sum() > 50
    assert iou((soft < 0.5) & ~on_sphere, (hard < 0.5) & ~on_sphere) > 0.8  # the same shadow, softened


def test_cast_shadow_checks_shapes():
    depth, _, _ = sphere_on_ground()
    with pytest.raises(ValueError, match="expected"):
        relight.cast_shadow(depth[:10], CAMERA, np.array([0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="sky"):
        relight.cast_shadow(depth, CAMERA, np.array([0.0, 1.0, 0.0]), sky=np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="direction"):
        relight.cast_shadow(depth, CAMERA, np.zeros(3))
    with pytest.raises(ValueError, match="beyond_frame"):
        relight.cast_shadow(depth, CAMERA, np.array([0.0, 1.0, 0.0]), beyond_frame=-1.0)


# ------------------------------------------------------------------------------------------ Relighter


def rendered_estimate(sun_dir, sky_rows=2):
    """A SceneEstimate whose photo IS the image model: albedo · (sun · cos · visibility + E_sky(n)), with
    visibility from cast_shadow itself, a sky without order-1 part (so the sun is recovered exactly), and the
    top `sky_rows` rows marked as sky."""
    depth, normals, _ = sphere_on_ground()
    sun = relight.Sun(sun_dir, (2.0, 1.8, 1.5), angle_deg=0.0)
    sky_L = np.zeros((9, 3))
    sky_L[0] = (0.5, 0.6, 0.8)
    sky_L[6] = (0.05, 0.05, 0.1)
    rng = np.random.default_rng(1)
    albedo = rng.uniform(0.2, 0.8, size=(CAMERA.height, CAMERA.width, 3)).astype(np.float32)
    sky = np.zeros(depth.shape, bool)
    sky[:sky_rows] = True
    shadow_options = {"samples": 1, "steps": relight.DEFAULT_SHADOW_STEPS, "thickness": relight.SHADOW_THICKNESS,
                      "seed": 0}
    visibility = relight.cast_shadow(np.where(sky, np.nan, depth), CAMERA, sun.direction, sky=sky, angle_deg=0.0,
                                     **shadow_options)
    shading_sun = np.maximum(normals @ sun.direction, 0.0)[..., None] * visibility[..., None] * sun.irradiance
    image = (albedo * (shading_sun + sh.shading(normals, sky_L))).astype(np.float32)
    image[sky] = (0.3, 0.4, 0.9)
    lighting = sky_L + np.outer(sh.radiance_basis(sun.direction), sun.irradiance)
    estimate = SceneEstimate(image=image, albedo=albedo, shading=np.ones_like(image),
                             normals=normals.astype(np.float32),
                             depth=depth.astype(np.float32), depth_fused=depth.astype(np.float32),
                             confidence=np.ones(depth.shape, np.float32), lighting=lighting, camera=CAMERA,
                             shadow=np.ones(depth.shape, np.float32), sky=sky)
    return estimate, sun, sky_L


def make_relighter(estimate, sun_to_sky=None):
    """A Relighter given the estimate's exact lighting (sun and sky as the photo was made); by default its moved
    suns keep the photo's sun strength."""
    lighting = relight.lighting_from_estimate(estimate.lighting, sun_fraction=1.0, angle_deg=0.0)
    return relight.Relighter(estimate, lighting=lighting, shadow_samples=1, sun_to_sky=sun_to_sky)


def test_relighter_recovers_the_photo_under_its_own_lighting():
    estimate, sun, sky_L = rendered_estimate(np.array([0.3, 0.9, 0.3]))
    r = make_relighter(estimate)
    np.testing.assert_allclose(r.original.sun.direction, sun.direction, atol=1e-9)
    np.testing.assert_allclose(r.original.sky, sky_L, atol=1e-9)
    assert r.exposure == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(r.render(r.original).image, estimate.image, atol=1e-5)


def test_relighter_renders_a_moved_sun_as_the_image_model_says():
    estimate, sun, sky_L = rendered_estimate(np.array([0.3, 0.9, 0.3]))
    r = make_relighter(estimate)
    lighting = r.sun_at(40.0, 120.0, up=GROUND_NORMAL)
    relit = r.render(lighting)
    s = lighting.sun.direction
    visibility = relight.cast_shadow(np.where(estimate.sky, np.nan, estimate.depth_fused), CAMERA, s,
                                     sky=estimate.sky, angle_deg=0.0, samples=1)
    expected = estimate.albedo * (np.maximum(estimate.normals @ s, 0.0)[..., None] * visibility[..., None]
                                  * sun.irradiance + np.maximum(sh.shading(estimate.normals, lighting.sky), 0.0))
    ground = ~estimate.sky
    np.testing.assert_allclose(relit.image[ground], expected[ground], rtol=1e-4, atol=1e-5)
    assert relit.visibility.min() == 0.0  # the sphere casts a shadow
    np.testing.assert_allclose(relit.image[estimate.sky], estimate.image[estimate.sky], rtol=0.05)  # same sky, turned


def test_sky_pixels_follow_the_lightings_mean():
    estimate, sun, sky_L = rendered_estimate(np.array([0.3, 0.9, 0.3]))
    r = make_relighter(estimate)
    brighter = relight.Lighting(sky=2.0 * r.original.sky, sun=relight.Sun(sun.direction, 2.0 * sun.irradiance, 0.0))
    relit = r.render(brighter)
    np.testing.assert_allclose(relit.image[estimate.sky], 2.0 * estimate.image[estimate.sky], rtol=1e-5)
    # How the light splits between sun and sky does not show in the sky pixels (a photo does not pin it down).
    shared = r.scaled_like_photo(relight.with_sun_to_sky(r.original, 9.0))
    np.testing.assert_allclose(r.render(shared).image[estimate.sky], estimate.image[estimate.sky], rtol=1e-5)


def test_scaled_like_photo_matches_the_mean_luminance():
    estimate, _, _ = rendered_estimate(np.array([0.3, 0.9, 0.3]))
    r = make_relighter(estimate)
    other = relight.Lighting(sky=5.0 * r.original.sky, sun=relight.Sun((0.0, 1.0, 0.0), 7.0))
    scaled = r.scaled_like_photo(other)
    assert scaled.sh()[0] @ sh.LUMINANCE == pytest.approx(estimate.lighting[0] @ sh.LUMINANCE)
    assert scaled.sun.irradiance[0] / scaled.sky[0, 0] == pytest.approx(7.0 / (5.0 * r.original.sky[0, 0]))


def test_time_of_day_moves_the_sun_between_the_ends():
    estimate, _, _ = rendered_estimate(np.array([0.3, 0.9, 0.3]))
    r = make_relighter(estimate)
    frames = list(r.time_of_day((10.0, 90.0), (50.0, 150.0), 3))
    assert [sun for sun, _ in frames] == [(10.0, 90.0), (30.0, 120.0), (50.0, 150.0)]
    np.testing.assert_allclose(frames[1][1].image, r.render(r.sun_at(30.0, 120.0)).image)
    with pytest.raises(ValueError, match="frames"):
        list(r.time_of_day((10.0, 90.0), (50.0, 150.0), 0))


def test_time_of_day_turns_the_shorter_way_round():
    estimate, _, _ = rendered_estimate(np.array([0.3, 0.9, 0.3]))
    r = make_relighter(estimate)
    suns = [sun for sun, _ in r.time_of_day((30.0, 350.0), (30.0, 10.0), 5)]
    np.testing.assert_allclose([azimuth for _, azimuth in suns], [350.0, 355.0, 0.0, 5.0, 10.0], atol=1e-9)
    suns = [sun for sun, _ in r.time_of_day((30.0, 10.0), (30.0, 350.0), 3)]
    np.testing.assert_allclose([azimuth for _, azimuth in suns], [10.0, 0.0, 350.0], atol=1e-9)


def test_new_suns_get_the_sun_to_sky_ratio_and_the_photo_keeps_its_own():
    # An order-1 estimate caps the photo's sun near the sky's brightness: new suns get a clear day's by default,
    # the share of the photo's mean light it would have high in the sky, dimmed and reddened by the air below that.
    estimate, sun, sky_L = rendered_estimate(np.array([0.3, 0.9, 0.3]))
    lighting = relight.lighting_from_estimate(estimate.lighting, sun_fraction=1.0, angle_deg=0.0)
    r = relight.Relighter(estimate, lighting=lighting, shadow_samples=1)
    assert r.sun_to_sky == relight.DEFAULT_SUN_TO_SKY
    np.testing.assert_allclose(r.original.sun.irradiance, sun.irradiance, atol=1e-9)
    np.testing.assert_allclose(r.render(r.original).image, estimate.image, atol=1e-5)
    photo_mean = r.original.sh()[0] @ sh.LUMINANCE
    up = np.array([0.0, 1.0, 0.0])
    for moved, elevation in [(r.sun_at(40.0, 120.0, up=GROUND_NORMAL), 40.0),
                             (r.sun_towards((0.2, 0.9, 0.4)), math.degrees(math.asin(0.9 / math.sqrt(1.01))))]:
        air = relight.sun_transmittance(elevation) / relight.sun_transmittance(90.0)
        high = relight.Lighting(sky=moved.sky, sun=relight.Sun(moved.sun.direction, moved.sun.irradiance / air))
        sky_mean = sh.C4 * moved.sky[0] @ sh.LUMINANCE
        assert high.sun.irradiance @ sh.LUMINANCE == pytest.approx(relight.DEFAULT_SUN_TO_SKY * sky_mean)
        np.testing.assert_allclose(high.sun.irradiance / high.sun.irradiance[0], sun.irradiance / sun.irradiance[0])
        assert high.sh()[0] @ sh.LUMINANCE == pytest.approx(photo_mean)  # the light is shared, not added
        assert abs(moved.sun.direction @ up) > 0 and (air <= 1.0).all()
    overcast = relight.Lighting(sky=sky_L)  # no sun in the photo: a new one of the sky's colour
    moved = r.sun_towards((0.0, 1.0, 0.0), base=overcast)  # at the zenith: no air to take out
    np.testing.assert_allclose(moved.sun.irradiance / moved.sun.irradiance[0], sky_L[0] / sky_L[0, 0])
    assert moved.sun.irradiance @ sh.LUMINANCE == pytest.approx(relight.DEFAULT_SUN_TO_SKY * sh.C4 * moved.sky[0]
                                                                @ sh.LUMINANCE)
    assert moved.sh()[0] @ sh.LUMINANCE == pytest.approx(sky_L[0] @ sh.LUMINANCE)


def test_low_suns_are_dimmer_and_redder():
    # Kasten & Young's air mass: 1 at the zenith, 37.9 at the horizon (their table), 5.6 at 10 degrees.
    assert relight.air_mass(90.0) == pytest.approx(1.0, abs=1e-3)
    assert relight.air_mass(0.0) == pytest.approx(37.9, rel=0.01)
    assert relight.air_mass(10.0) == pytest.approx(5.6, rel=0.02)
    assert relight.air_mass(-5.0) == relight.air_mass(0.0)
    estimate, _, _ = rendered_estimate(np.array([0.3, 0.9, 0.3]))
    r = relight.Relighter(estimate, shadow_samples=1)
    noon, evening = r.sun_at(70.0, 90.0).sun.irradiance, r.sun_at(5.0, 90.0).sun.irradiance
    np.testing.assert_allclose(evening / noon, relight.sun_transmittance(5.0) / relight.sun_transmittance(70.0))
    assert evening[0] / evening[2] > 5 * noon[0] / noon[2]  # red against blue: a sunset
    assert (evening < noon).all()


def test_sky_pixels_keep_their_look_when_only_the_sun_moves():
    # A photo pins down order 1 of its light; with the sun taken out, the sky's order-1/2 parts are what the sun
    # left, and recolouring by them darkened the sky towards and away from a moved sun (maroon skies on real photos).
    # (With the default sun-to-sky ratio a new sun also dims towards the horizon, and the sky pixels with it.)
    L = np.zeros((9, 3))
    L[0] = (1.0, 1.0, 1.0)
    L[1] = (0.3, 0.24, 0.18)  # brighter towards +y (SH index 1 is y), warmer
    estimate, _, _ = rendered_estimate(np.array([0.3, 0.9, 0.3]))
    r = relight.Relighter(estimate, lighting=relight.lighting_from_estimate(L, sun_fraction=0.6), shadow_samples=1,
                          sun_to_sky=None)
    for elevation, azimuth in [(30.0, 0.0), (80.0, 90.0), (10.0, 200.0)]:
        relit = r.render(r.sun_at(elevation, azimuth))
        np.testing.assert_allclose(relit.image[estimate.sky], estimate.image[estimate.sky], rtol=1e-6)
    tint = np.array([1.5, 1.0, 0.5])
    warmer = relight.Lighting(sky=r.original.sky * tint,
                              sun=relight.Sun(r.original.sun.direction, r.original.sun.irradiance * tint))
    scale = r.render(warmer).image[estimate.sky] / estimate.image[estimate.sky]  # the sky's colour, the mean's level
    np.testing.assert_allclose(scale / scale[:, 1:2], np.broadcast_to(tint / tint[1], scale.shape), rtol=1e-5)


def test_skylight_never_reaches_zero():
    # An order-2 sky with its sun taken out shades some normals negatively; they went black in the sun's shadow.
    estimate, _, _ = rendered_estimate(np.array([0.3, 0.9, 0.3]))
    r = make_relighter(estimate)
    sky = np.zeros((9, 3))
    sky[0] = (0.5, 0.6, 0.8)
    sky[6] = (-1.5, -1.8, -2.2)  # a strong negative z² lobe: surfaces facing the camera get no skylight
    ground = ~estimate.sky
    assert (sh.shading(estimate.normals, sky)[ground] < 0).any()
    relit = r.render(relight.Lighting(sky=sky), refine=False)  # no sun: skylight alone
    floor = relight.SKY_SHADING_FLOOR * sh.C4 * sky[0]
    assert (relit.image[ground] >= estimate.albedo[ground] * floor * r.exposure * (1 - 1e-5)).all()
    np.testing.assert_allclose(relit.sky_shading[ground].min(axis=0), floor, rtol=1e-5)


def test_with_sun_to_sky_sets_the_sun_strength_and_keeps_its_colour():
    sky = np.zeros((9, 3))
    sky[0] = (0.8, 0.9, 1.2)
    lighting = relight.Lighting(sky=sky, sun=relight.Sun((0.0, 1.0, 0.0), (3.0, 2.0, 1.0)))
    strong = relight.with_sun_to_sky(lighting, 5.0)
    sky_mean = sh.C4 * sky[0] @ sh.LUMINANCE  # a white surface's shading under the sky, averaged over normals
    assert strong.sun.irradiance @ sh.LUMINANCE == pytest.approx(5.0 * sky_mean)
    np.testing.assert_allclose(strong.sun.irradiance / strong.sun.irradiance[0], (1.0, 2 / 3, 1 / 3))
    np.testing.assert_array_equal(strong.sky, sky)
    with pytest.raises(ValueError, match="no sun"):
        relight.with_sun_to_sky(relight.Lighting(sky=sky), 2.0)
    with pytest.raises(ValueError, match=">= 0"):
        relight.with_sun_to_sky(lighting, -1.0)
