"""geometry.py: back-projection, normals from depth, discontinuities, grid meshes, PLY, rotations."""

import math

import numpy as np
import pytest

from invrender_core import geometry
from invrender_core.camera import Camera

CAMERA = Camera(width=40, height=30, fx=36.0, fy=40.0, cx=19.0, cy=16.5)  # off-centre, non-square pixels


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def plane_depth(camera, normal, offset):
    """Depth of the plane {X : normal . X = offset} along every ray: d = offset / (normal . ray)."""
    return offset / (camera.rays() @ normal)


def angle_deg(a, b):
    return np.degrees(np.arccos(np.clip((unit(a) * unit(b)).sum(-1), -1.0, 1.0)))


def read_ply(path):
    """Minimal reader for the binary PLY layout write_ply produces: (header lines, vertices, faces)."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    counts = {line.split()[1]: int(line.split()[2]) for line in header if line.startswith("element")}
    vertex_type = np.dtype([(name, "<f4") for name in "xyzst"])
    vertices = np.frombuffer(data, vertex_type, counts["vertex"], offset=end)
    face_type = np.dtype([("n", "u1"), ("idx", "<i4", (3,))])
    faces = np.frombuffer(data, face_type, counts["face"], offset=end + vertices.nbytes)
    assert end + vertices.nbytes + faces.nbytes == len(data)
    return header, vertices, faces


# ----------------------------------------------------------------------------------------------------
# backproject


def test_backproject_gives_float32_points_at_the_depth_along_each_ray():
    depth = np.random.default_rng(0).uniform(1.0, 5.0, (30, 40))
    points = geometry.backproject(depth, CAMERA)
    assert points.shape == (30, 40, 3) and points.dtype == np.float32
    np.testing.assert_allclose(-points[..., 2], depth, rtol=1e-6)
    uv, d = CAMERA.project(points.astype(np.float64))
    u, v = CAMERA.pixel_grid()
    np.testing.assert_allclose(uv[..., 0], u, atol=1e-4)
    np.testing.assert_allclose(uv[..., 1], v, atol=1e-4)
    np.testing.assert_allclose(d, depth, rtol=1e-6)


def test_backproject_checks_the_depth_shape():
    with pytest.raises(ValueError, match=r"\(30, 39\).*\(30, 40\)"):
        geometry.backproject(np.ones((30, 39)), CAMERA)
    with pytest.raises(ValueError, match=r"\(H, W\).*\(30, 40, 1\)"):
        geometry.backproject(np.ones((30, 40, 1)), CAMERA)


# ----------------------------------------------------------------------------------------------------
# normals


def test_tilted_plane_normals_equal_the_plane_normal():
    n = unit([0.3, -0.4, 1.0])
    depth = plane_depth(CAMERA, n, -3.0)
    normals = geometry.normals_from_depth(depth, CAMERA)
    assert normals.shape == (30, 40, 3) and normals.dtype == np.float32
    np.testing.assert_allclose(normals, np.broadcast_to(n, normals.shape), atol=2e-6)


def test_sphere_normals_match_the_analytic_ones():
    camera = Camera.from_fov(64, 48, 50.0)
    depth, exact, on_sphere = geometry.synthetic_sphere_plane(camera, centre=(0.0, 0.0, -4.0), radius=3.0)
    assert on_sphere.all()
    err = angle_deg(geometry.normals_from_depth(depth, camera), exact)
    assert err[1:-1, 1:-1].max() < 0.05  # central differences
    assert err.max() < 0.5  # one-sided at the image border


def test_normals_face_the_camera_and_survive_invalid_pixels():
    n = unit([-0.2, 0.1, 1.0])
    depth = plane_depth(CAMERA, n, -2.0)
    depth[10, 10] = np.nan
    depth[12, 20:25] = -1.0
    mask = np.ones(depth.shape, bool)
    mask[20, 5] = False
    normals = geometry.normals_from_depth(depth, CAMERA, mask=mask)
    assert np.isfinite(normals).all()
    invalid = ~geometry.valid_mask(depth, mask)
    np.testing.assert_array_equal(normals[invalid], np.broadcast_to([0.0, 0.0, 1.0], (invalid.sum(), 3)))
    # One-sided differences next to the holes are still exact on a plane.
    np.testing.assert_allclose(normals[~invalid], np.broadcast_to(n, (int((~invalid).sum()), 3)), atol=2e-6)
    points = geometry.backproject(depth, CAMERA)
    assert ((normals * points).sum(-1)[~invalid] < 0).all()


def test_normals_do_not_difference_across_a_step():
    n_near, n_far = unit([0.0, 0.0, 1.0]), unit([0.4, 0.0, 1.0])
    depth = np.where(CAMERA.pixel_grid()[0] < 20, plane_depth(CAMERA, n_near, -2.0),
                     plane_depth(CAMERA, n_far, -4.0))
    normals = geometry.normals_from_depth(depth, CAMERA)
    np.testing.assert_allclose(normals[:, :20], np.broadcast_to(n_near, (30, 20, 3)), atol=2e-6)
    np.testing.assert_allclose(normals[:, 20:], np.broadcast_to(n_far, (30, 20, 3)), atol=2e-6)


def test_normals_check_shapes():
    with pytest.raises(ValueError, match=r"\(30, 41\).*\(30, 40\)"):
        geometry.normals_from_depth(np.ones((30, 41)), CAMERA)
    with pytest.raises(ValueError, match=r"mask.*\(3, 3\).*\(30, 40\)"):
        geometry.normals_from_depth(np.ones((30, 40)), CAMERA, mask=np.ones((3, 3), bool))


# ----------------------------------------------------------------------------------------------------
# discontinuities


def step_depth(near=2.0, far=3.0, shape=(6, 8), column=4):
    depth = np.full(shape, far)
    depth[:, :column] = near
    return depth


def test_discontinuities_mark_both_sides_of_a_step_only():
    marked = geometry.depth_discontinuities(step_depth(), 0.05)
    expected = np.zeros((6, 8), bool)
    expected[:, 3:5] = True
    np.testing.assert_array_equal(marked, expected)


def test_discontinuities_are_relative_to_depth():
    np.testing.assert_array_equal(geometry.depth_discontinuities(step_depth() * 1000.0, 0.05),
                                  geometry.depth_discontinuities(step_depth(), 0.05))
    assert not geometry.depth_discontinuities(step_depth(2.0, 2.08), 0.05).any()  # 4 % < 5 %
    assert geometry.depth_discontinuities(step_depth(2.0, 2.12), 0.05).any()  # 6 % > 5 %
    assert geometry.depth_discontinuities(step_depth(2.12, 2.0), 0.05).any()  # symmetric


def test_unknown_pixels_are_not_discontinuities():
    depth = np.full((5, 5), 2.0)
    depth[2, 2] = np.nan
    depth[0, 0] = 0.0
    assert not geometry.depth_discontinuities(depth).any()
    mask = np.ones((5, 5), bool)
    mask[:, 4] = False
    depth[:, 4] = 9.0  # a jump, but masked out
    assert not geometry.depth_discontinuities(depth, mask=mask).any()


# ----------------------------------------------------------------------------------------------------
# grid_mesh


def test_grid_mesh_of_a_plane_has_every_pixel_and_two_triangles_per_cell():
    depth = plane_depth(CAMERA, unit([0.2, 0.3, 1.0]), -3.0)
    mesh = geometry.grid_mesh(depth, CAMERA)
    assert mesh.vertices.shape == (40 * 30, 3) and mesh.vertices.dtype == np.float32
    assert mesh.faces.shape == (2 * 39 * 29, 3) and mesh.faces.dtype == np.int32
    assert mesh.uvs.dtype == np.float32 and mesh.pixel_index.dtype == np.int64
    np.testing.assert_array_equal(mesh.pixel_index, np.arange(40 * 30))
    np.testing.assert_allclose(mesh.vertices, geometry.backproject(depth, CAMERA).reshape(-1, 3), rtol=1e-6)


def test_grid_mesh_counts_with_a_masked_pixel_and_an_isolated_one():
    depth = np.full((4, 5), 2.0)
    mask = np.ones((4, 5), bool)
    mask[1, 2] = False  # interior hole: each of its 4 cells keeps the one triangle of its 3 valid corners
    mesh = geometry.grid_mesh(depth, Camera.from_fov(5, 4), mask=mask)
    assert len(mesh.faces) == 2 * 3 * 4 - 4
    assert len(mesh.vertices) == 4 * 5 - 1
    assert 1 * 5 + 2 not in mesh.pixel_index

    depth = np.full((4, 5), np.nan)
    depth[0:2, 0:2] = 2.0  # one full cell
    depth[3, 4] = 2.0  # a pixel with no valid neighbour: no face, so no vertex
    mesh = geometry.grid_mesh(depth, Camera.from_fov(5, 4))
    assert len(mesh.faces) == 2 and len(mesh.vertices) == 4
    np.testing.assert_array_equal(np.sort(mesh.pixel_index), [0, 1, 5, 6])
    assert mesh.faces.min() == 0 and mesh.faces.max() == 3  # indices are compact


def test_grid_mesh_step_subsamples_the_pixels():
    camera = Camera.from_fov(7, 5)
    mesh = geometry.grid_mesh(np.full((5, 7), 3.0), camera, step=2)
    assert len(mesh.vertices) == 3 * 4 and len(mesh.faces) == 2 * 2 * 3
    i, j = np.divmod(mesh.pixel_index, 7)
    assert set(i) == {0, 2, 4} and set(j) == {0, 2, 4, 6}
    with pytest.raises(ValueError, match="step"):
        geometry.grid_mesh(np.full((5, 7), 3.0), camera, step=0)


def test_grid_mesh_uvs_follow_blender_convention():
    depth = np.full((30, 40), 2.0)
    mesh = geometry.grid_mesh(depth, CAMERA)
    i, j = np.divmod(mesh.pixel_index, 40)
    np.testing.assert_allclose(mesh.uvs[:, 0], (j + 0.5) / 40, rtol=1e-6)
    np.testing.assert_allclose(mesh.uvs[:, 1], 1.0 - (i + 0.5) / 30, rtol=1e-6)
    top_left = mesh.pixel_index == 0
    assert mesh.uvs[top_left, 1] > 0.95  # image top = v near 1 (Blender's origin is bottom-left)


def face_normals(mesh):
    v = mesh.vertices.astype(np.float64)[mesh.faces]  # (F, 3, 3)
    return np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])


def test_grid_mesh_faces_wind_counter_clockwise_towards_the_camera():
    camera = Camera.from_fov(80, 60, 60.0)
    depth, _, _ = geometry.synthetic_sphere_plane(camera)
    mesh = geometry.grid_mesh(depth, camera)
    centroids = mesh.vertices.astype(np.float64)[mesh.faces].mean(1)
    assert ((face_normals(mesh) * -centroids).sum(-1) > 0).all()  # towards the camera at the origin
    flat = geometry.grid_mesh(np.full((30, 40), 2.0), CAMERA)
    fn = unit(face_normals(flat))
    np.testing.assert_allclose(fn, np.broadcast_to([0.0, 0.0, 1.0], fn.shape), atol=1e-6)


def test_grid_mesh_never_bridges_a_depth_step():
    depth = step_depth(2.0, 4.0, shape=(6, 8), column=4)
    mesh = geometry.grid_mesh(depth, Camera.from_fov(8, 6))
    assert len(mesh.faces) == 2 * 5 * 3 + 2 * 5 * 3  # cells left and right of the step, none across
    camera = Camera.from_fov(80, 60, 60.0)
    depth, _, _ = geometry.synthetic_sphere_plane(camera)
    mesh = geometry.grid_mesh(depth, camera, discontinuity_threshold=0.05)
    d = -mesh.vertices[mesh.faces, 2]  # (F, 3) vertex depths
    assert (d.max(1) / d.min(1) <= 1.05 + 1e-5).all()
    without_cut = geometry.grid_mesh(depth, camera, discontinuity_threshold=None)
    assert len(without_cut.faces) == 2 * 79 * 59 > len(mesh.faces)


def test_far_patches_fill_cut_cells_at_their_farthest_depth():
    depth = step_depth(2.0, 4.0, shape=(6, 8), column=4)  # the cells of column 3 are cut
    camera = Camera.from_fov(8, 6)
    cells = np.zeros((5, 7), bool)
    cells[1:3, 3] = True
    mask = np.ones((6, 8), bool)
    mask[3, 3] = False  # a corner of the second chosen cell: no patch there
    patches = geometry.far_patches(depth, camera, cells, mask=mask)
    assert len(patches.faces) == 2 and len(patches.vertices) == 4
    np.testing.assert_allclose(-patches.vertices[:, 2], 4.0)  # all at the far side's depth
    i, j = np.divmod(patches.pixel_index, 8)
    assert set(zip(i, j, strict=True)) == {(1, 3), (1, 4), (2, 3), (2, 4)}
    uv, _ = camera.project(patches.vertices)
    np.testing.assert_allclose(uv, np.stack([j + 0.5, i + 0.5], -1), atol=1e-5)  # on their pixels' rays
    assert (face_normals(patches)[:, 2] > 0).all()  # facing the camera, as grid_mesh's faces
    joined = geometry.join_meshes(geometry.grid_mesh(depth, camera), patches)
    np.testing.assert_array_equal(geometry.covered_cells(joined, 8, 6)[:, 3], [False, True, False, False, False])
    with pytest.raises(ValueError, match="cells"):
        geometry.far_patches(depth, camera, np.zeros((6, 8), bool))


@pytest.mark.parametrize("step", [1, 3])
def test_grid_mesh_reaching_the_edges_spans_the_whole_frame(step):
    camera = Camera.from_fov(10, 8, 50.0)  # with step 3 the last row (6) and column (9) are not the photo's last
    depth = plane_depth(camera, unit([0.2, 0.3, 1.0]), -3.0)
    mesh = geometry.grid_mesh(depth, camera, discontinuity_threshold=None, step=step, reach_edges=True)
    uv, planar = camera.project(mesh.vertices)
    np.testing.assert_allclose([uv[:, 0].min(), uv[:, 0].max(), uv[:, 1].min(), uv[:, 1].max()], [0, 10, 0, 8],
                               atol=1e-5)
    np.testing.assert_allclose(planar, depth.ravel()[mesh.pixel_index], rtol=1e-6)  # each at its pixel's depth
    np.testing.assert_allclose(mesh.uvs, np.stack([uv[:, 0] / 10, 1 - uv[:, 1] / 8], -1), atol=1e-6)
    inner = (uv[:, 0] > 0.25) & (uv[:, 0] < 9.75) & (uv[:, 1] > 0.25) & (uv[:, 1] < 7.75)
    i, j = np.divmod(mesh.pixel_index[inner], 10)
    np.testing.assert_allclose(uv[inner], np.stack([j + 0.5, i + 0.5], -1), atol=1e-5)  # pixel centres inside


def test_covered_cells_are_those_with_two_triangles():
    depth = step_depth(2.0, 4.0, shape=(6, 8), column=4)
    camera = Camera.from_fov(8, 6)
    covered = geometry.covered_cells(geometry.grid_mesh(depth, camera), 8, 6)
    expected = np.ones((5, 7), bool)
    expected[:, 3] = False
    np.testing.assert_array_equal(covered, expected)
    half = geometry.keep_faces(geometry.grid_mesh(np.full((6, 8), 2.0), camera), np.arange(70) != 0)
    assert geometry.covered_cells(half, 8, 6).sum() == 34  # one cell lost a triangle
    coarse = geometry.covered_cells(geometry.grid_mesh(depth, camera, step=2), 8, 6, step=2)  # grid columns 0-6
    expected = np.zeros((5, 7), bool)
    expected[:4, [0, 1, 4, 5]] = True  # the cells of grid columns 0-2 and 4-6; columns 2-4 cross the step
    np.testing.assert_array_equal(coarse, expected)


def test_grid_mesh_checks_shapes():
    with pytest.raises(ValueError, match=r"\(29, 40\).*\(30, 40\)"):
        geometry.grid_mesh(np.ones((29, 40)), CAMERA)
    with pytest.raises(ValueError, match="uvs"):
        geometry.Mesh(vertices=np.zeros((4, 3), np.float32), faces=np.zeros((1, 3), np.int32),
                      uvs=np.zeros((3, 2), np.float32), pixel_index=np.zeros(4, np.int64))


# ----------------------------------------------------------------------------------------------------
# PLY


def test_write_ply_round_trip(tmp_path):
    camera = Camera.from_fov(20, 15, 60.0)
    depth, _, _ = geometry.synthetic_sphere_plane(camera)
    mesh = geometry.grid_mesh(depth, camera)
    geometry.write_ply(tmp_path / "mesh.ply", mesh)
    header, vertices, faces = read_ply(tmp_path / "mesh.ply")
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    assert "property list uchar int vertex_indices" in header
    xyz = np.stack([vertices[c] for c in "xyz"], -1)
    np.testing.assert_array_equal(xyz, mesh.vertices)
    np.testing.assert_array_equal(np.stack([vertices["s"], vertices["t"]], -1), mesh.uvs)
    assert (faces["n"] == 3).all()
    np.testing.assert_array_equal(faces["idx"], mesh.faces)


def test_write_ply_of_an_empty_mesh(tmp_path):
    mesh = geometry.grid_mesh(np.full((4, 4), np.nan), Camera.from_fov(4, 4))
    assert len(mesh.vertices) == 0 and len(mesh.faces) == 0
    geometry.write_ply(tmp_path / "empty.ply", mesh)
    _, vertices, faces = read_ply(tmp_path / "empty.ply")
    assert len(vertices) == 0 and len(faces) == 0


# ----------------------------------------------------------------------------------------------------
# rotations and the analytic scene


def test_rotation_about_matches_rotation_z_and_keeps_its_axis():
    np.testing.assert_allclose(geometry.rotation_about([0, 0, 2], 0.7), geometry.rotation_z(0.7), atol=1e-12)
    axis = unit([1, -2, 0.5])
    R = geometry.rotation_about(axis, 2.0)
    np.testing.assert_allclose(R @ axis, axis, atol=1e-12)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-zero"):
        geometry.rotation_about([0, 0, 0], 1.0)


def test_azimuth_turn_turns_about_up_only():
    up = np.array([0.0, 0.0, 1.0])
    source, target = unit([1, 0, 1]), unit([0, -2, 0.1])  # azimuth 0 -> -90 degrees, elevation 45 -> 3
    R = geometry.azimuth_turn(source, target, up)
    np.testing.assert_allclose(R, geometry.rotation_z(-math.pi / 2), atol=1e-12)
    np.testing.assert_allclose(R @ up, up, atol=1e-12)  # the sky stays upright
    np.testing.assert_allclose(geometry.azimuth_turn(up, target, up), np.eye(3))  # overhead: no azimuth
    np.testing.assert_allclose(geometry.azimuth_turn(source, -3 * up, up), np.eye(3))


def test_synthetic_scene_is_consistent():
    camera = Camera.from_fov(80, 60, 60.0)
    depth, normals, on_sphere = geometry.synthetic_sphere_plane(camera, centre=(0.1, -0.05, -3.0), radius=0.8)
    points = depth[..., None] * camera.rays()
    np.testing.assert_allclose(np.linalg.norm(points[on_sphere] - [0.1, -0.05, -3.0], axis=-1), 0.8)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0)
    assert ((normals * points).sum(-1) < 0).all()  # facing the camera
    assert 0.1 < on_sphere.mean() < 0.5
    with pytest.raises(ValueError, match="miss the plane"):
        geometry.synthetic_sphere_plane(camera, plane_normal=(0.0, 1.0, 0.0))


# ----------------------------------------------------------------------------------------------------
# keep_faces, background_layer


def test_keep_faces_drops_unused_vertices_and_compacts_indices():
    mesh = geometry.grid_mesh(np.full((3, 3), 2.0), Camera.from_fov(3, 3))  # 8 faces on 9 vertices
    keep = np.zeros(len(mesh.faces), bool)
    keep[0] = True
    part = geometry.keep_faces(mesh, keep)
    assert part.faces.shape == (1, 3) and sorted(part.faces[0]) == [0, 1, 2]
    np.testing.assert_array_equal(part.vertices[part.faces[0]], mesh.vertices[mesh.faces[0]])
    np.testing.assert_array_equal(part.pixel_index[part.faces[0]], mesh.pixel_index[mesh.faces[0]])
    with pytest.raises(ValueError, match="one per face"):
        geometry.keep_faces(mesh, keep[:-1])


SPHERE_CAMERA = Camera.from_fov(80, 60, 60.0)


def test_background_behind_a_sphere_is_the_plane_it_hides():
    depth, _, on_sphere = geometry.synthetic_sphere_plane(SPHERE_CAMERA)
    plane = plane_depth(SPHERE_CAMERA, unit([0.0, 0.3, 1.0]), -5.0)
    layer = geometry.background_layer(depth, band=80)  # wider than the sphere: all of it is occluder
    np.testing.assert_array_equal(layer.region, on_sphere)
    # The ring: plane pixels with a sphere pixel as 4-neighbour.
    touches = ndimage_dilate4(on_sphere) & ~on_sphere
    np.testing.assert_array_equal(layer.ring, touches)
    # Inverse depth of a plane is affine in the pixel coordinates, hence discrete-harmonic: the continuation
    # surrounded by the plane is the plane itself.
    np.testing.assert_allclose(layer.depth[on_sphere], plane[on_sphere], rtol=1e-9)
    assert np.isnan(layer.depth[~(on_sphere | touches)]).all()
    columns = np.broadcast_to(np.arange(80.0), (60, 80))
    filled = layer.fill(np.where(on_sphere, -1.0, columns))  # values the region held are ignored
    np.testing.assert_allclose(filled, columns, atol=1e-9)
    rgb = layer.fill(np.where(on_sphere[..., None], 0.0, np.stack([columns, 2 * columns, 0 * columns], -1)))
    np.testing.assert_allclose(rgb[..., 1], 2 * columns, atol=1e-9)


def ndimage_dilate4(mask):
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def test_background_band_limits_the_region_to_the_occluders_outline():
    depth, _, on_sphere = geometry.synthetic_sphere_plane(SPHERE_CAMERA)
    plane = plane_depth(SPHERE_CAMERA, unit([0.0, 0.3, 1.0]), -5.0)
    layer = geometry.background_layer(depth, band=4)
    outline = on_sphere & ndimage_dilate4(~on_sphere)  # sphere pixels next to the plane
    assert layer.region[outline].all() and (layer.region <= on_sphere).all()
    assert 0 < layer.region.sum() < on_sphere.sum()
    assert not layer.region[30, 42]  # the middle of the sphere is more than 4 pixels from its outline
    behind = layer.depth[layer.region]
    assert (behind > depth[layer.region] * 1.05).all()
    # Near the hidden plane, not on it: the band's inner border is free, so the tilt is not carried in.
    error = np.abs(behind / plane[layer.region] - 1)
    assert error.mean() < 0.01 and error.max() < 0.03


def test_background_of_a_step_is_the_far_side_continued_flat():
    depth = step_depth(2.0, 4.0, shape=(6, 10), column=5)  # columns 0-4 near, 5-9 far
    layer = geometry.background_layer(depth, band=3)
    expected = np.zeros((6, 10), bool)
    expected[:, 2:5] = True
    np.testing.assert_array_equal(layer.region, expected)
    np.testing.assert_array_equal(layer.ring[:, 5], True)
    assert layer.ring.sum() == 6
    np.testing.assert_allclose(layer.depth[expected], 4.0)
    far_first = step_depth(4.0, 2.0, shape=(6, 10), column=5)  # the same, mirrored
    np.testing.assert_array_equal(geometry.background_layer(far_first, band=3).region, expected[:, ::-1])


def test_background_needs_a_visible_far_side():
    plane = plane_depth(CAMERA, unit([0.2, 0.3, 1.0]), -3.0)
    layer = geometry.background_layer(plane)
    assert not layer.region.any() and not layer.ring.any() and np.isnan(layer.depth).all()
    values = np.random.default_rng(0).random((30, 40, 3))
    np.testing.assert_array_equal(layer.fill(values), values)
    # A near box against the sky (masked out): nothing to continue behind it.
    depth = np.full((30, 40), 100.0)
    depth[10:20, 10:20] = 2.0
    sky = depth > 50
    assert not geometry.background_layer(depth, mask=~sky).region.any()
    assert geometry.background_layer(depth).region.sum() == 10 * 10  # with the far wall known: all of the box


def test_background_layer_checks_its_arguments():
    with pytest.raises(ValueError, match="band"):
        geometry.background_layer(np.ones((4, 4)), band=0)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        geometry.background_layer(np.ones((4, 4, 1)))
    layer = geometry.background_layer(step_depth(2.0, 4.0, shape=(6, 10), column=5), band=3)
    with pytest.raises(ValueError, match=r"\(5, 10\).*\(6, 10\)"):
        layer.fill(np.ones((5, 10)))
