"""The `invrender` command: help, fuse, and the one-line error convention."""

import json

import numpy as np
import pytest
import torch

from invrender_core import cli, scene
from invrender_core.camera import Camera
from invrender_core.io import read_exr, write_exr, write_png
from invrender_core.nets import weights
from invrender_core.train.synthetic import register_untrained_networks


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("fuse", "scene", "decompose"):
        assert command in out


@pytest.fixture
def plane_maps(tmp_path):
    """A fronto-parallel plane at depth 2 with 1 % noise and exact normals, as files."""
    camera = Camera.from_fov(40, 30, 60.0)
    rng = np.random.default_rng(0)
    depth = (2.0 * (1 + 0.01 * rng.standard_normal((30, 40)))).astype(np.float32)
    normals = np.zeros((30, 40, 3), np.float32)
    normals[..., 2] = 1.0
    write_exr(tmp_path / "d.exr", depth)
    write_exr(tmp_path / "n.exr", normals)
    (tmp_path / "camera.json").write_text(json.dumps(camera.to_dict()))
    return tmp_path, depth


def test_fuse_writes_smoother_depth_and_mesh(plane_maps):
    folder, depth = plane_maps
    code = cli.main(["fuse", "--depth", str(folder / "d.exr"), "--normal", str(folder / "n.exr"),
                     "--camera", str(folder / "camera.json"), "-o", str(folder / "fused.exr"),
                     "--mesh", str(folder / "mesh.ply")])
    assert code == 0
    fused = read_exr(folder / "fused.exr")
    assert fused.shape == depth.shape
    assert np.abs(fused - 2.0).std() < 0.2 * np.abs(depth - 2.0).std()
    assert (folder / "mesh.ply").read_bytes().startswith(b"ply\nformat binary_little_endian")


def test_errors_are_one_line_exit_2_and_write_nothing(plane_maps, capsys):
    folder, _ = plane_maps
    before = sorted(p.name for p in folder.iterdir())
    code = cli.main(["fuse", "--depth", str(folder / "missing.exr"), "--normal", str(folder / "n.exr"),
                     "--camera", str(folder / "camera.json"), "-o", str(folder / "fused.exr")])
    assert code == cli.EXIT_FAILURE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("invrender fuse: error:") and "missing.exr" in err[0]
    assert sorted(p.name for p in folder.iterdir()) == before

    (folder / "bad.json").write_text("{not json")
    code = cli.main(["fuse", "--depth", str(folder / "d.exr"), "--normal", str(folder / "n.exr"),
                     "--camera", str(folder / "bad.json"), "-o", str(folder / "fused.exr")])
    assert code == cli.EXIT_FAILURE
    assert "bad.json is not valid JSON" in capsys.readouterr().err
    assert not (folder / "fused.exr").exists()


@pytest.mark.parametrize("where", ["first", "last"])
def test_verbose_shows_the_traceback_wherever_it_is_given(plane_maps, capsys, where):
    folder, _ = plane_maps
    args = ["fuse", "--depth", str(folder / "missing.exr"), "--normal", str(folder / "n.exr"),
            "--camera", str(folder / "camera.json"), "-o", str(folder / "fused.exr")]
    assert cli.main(["--verbose", *args] if where == "first" else [*args, "--verbose"]) == cli.EXIT_FAILURE
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("invrender fuse: error:")


def test_scene_without_maps_and_a_missing_photo_writes_nothing(tmp_path, capsys):
    code = cli.main(["scene", str(tmp_path / "photo.png"), "-o", str(tmp_path / "out.blend")])
    assert code == cli.EXIT_FAILURE
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("invrender scene: error:") and "photo.png" in err[-1]
    assert list(tmp_path.iterdir()) == []


def test_scene_with_only_one_map_says_what_to_do(tmp_path, capsys):
    code = cli.main(["scene", str(tmp_path / "photo.png"), "--depth", str(tmp_path / "d.exr"),
                     "-o", str(tmp_path / "out.blend")])
    assert code == cli.EXIT_FAILURE
    assert "give both --depth and --normal" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ decompose


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """Random-init width-1/16 networks registered as irn-test / depth-test in a weights folder."""
    return register_untrained_networks(tmp_path_factory.mktemp("weights"))


@pytest.fixture
def photo_file(tmp_path):
    rng = np.random.default_rng(0)
    image = (0.2 + 0.6 * rng.random((40, 56, 3))).astype(np.float32)
    write_png(tmp_path / "photo.png", image)
    return tmp_path / "photo.png"


@pytest.fixture
def no_shipped_weights(tmp_path, monkeypatch):
    """The package's shipped weights folder (filled later by training) must not change these tests."""
    monkeypatch.setattr(weights, "SHIPPED_WEIGHTS_DIR", tmp_path / "no-shipped-weights")


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and err[-1] == errors[0] and err[-1].startswith(f"invrender {command}: error:")
    assert not any("Traceback" in line for line in err)
    return err[-1]


def test_decompose_writes_the_file_contract(photo_file, nets, capsys):
    out = photo_file.parent / "maps"
    code = cli.main(["decompose", str(photo_file), "-o", str(out), "--irn", "irn-test", "--depth",
                     str(nets / "depth-test.safetensors"), "--weights-dir", str(nets), "--max-side", "32",
                     "--device", "cpu", "--fov", "45"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(scene.CONTRACT_FILES)
    camera = json.loads((out / "camera.json").read_text())
    assert camera["width"] == 56 and camera["fov_x_deg"] == pytest.approx(45.0)
    assert camera["working_size"] == [32, 16] and camera["depth_scale"] == "relative"
    assert read_exr(out / "albedo.exr").shape == (40, 56, 3) and read_exr(out / "shadow.exr").shape == (40, 56)
    assert "wrote" in capsys.readouterr().err
    assert sorted(p.name for p in photo_file.parent.iterdir()) == ["maps", "photo.png"]  # no temporary left
    assert camera["models"]["shadow"]["name"] == scene.DEFAULT_SHADOW_NET  # the photo's shadows, by default
    shadow = read_exr(out / "shadow.exr")
    code = cli.main(["decompose", str(photo_file), "-o", str(out), "--irn", "irn-test", "--depth", "depth-test",
                     "--weights-dir", str(nets), "--max-side", "32", "--device", "cpu", "--fov", "45",
                     "--shadow-net", "none"])
    assert code == 0 and json.loads((out / "camera.json").read_text())["models"]["shadow"] is None
    assert not np.array_equal(read_exr(out / "shadow.exr"), shadow)  # the IRN's own map


@pytest.mark.parametrize("case", ["missing", "not-an-image", "missing-weights", "no-cuda", "foreign-folder"])
def test_decompose_errors_are_one_line_exit_2_and_write_nothing(photo_file, nets, case, capsys, monkeypatch,
                                                                no_shipped_weights):
    folder = photo_file.parent
    args = ["decompose", str(photo_file), "-o", str(folder / "maps"), "--irn", "irn-test", "--depth", "depth-test",
            "--weights-dir", str(nets), "--max-side", "32"]
    expected = {"missing": "missing.png does not exist", "not-an-image": "is not an image file",
                "missing-weights": "no weights named 'irn-small'", "no-cuda": "CUDA is not available",
                "foreign-folder": "holds files that are not invrender output"}[case]
    if case == "missing":
        args[1] = str(folder / "missing.png")
    elif case == "not-an-image":
        (folder / "notes.png").write_text("not a picture")
        args[1] = str(folder / "notes.png")
    elif case == "missing-weights":
        args = args[:4] + ["--weights-dir", str(folder / "empty")]  # default network names
    elif case == "no-cuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        args += ["--device", "cuda"]
    else:
        (folder / "maps").mkdir()
        (folder / "maps" / "thesis.tex").write_text("precious")
    before = sorted(p.name for p in folder.iterdir())
    assert cli.main(args) == cli.EXIT_FAILURE
    assert expected in _one_error_line(capsys, "decompose")
    assert sorted(p.name for p in folder.iterdir()) == before
    if case == "foreign-folder":
        assert sorted(p.name for p in (folder / "maps").iterdir()) == ["thesis.tex"]


def test_scene_without_maps_runs_the_networks(photo_file, nets):
    pytest.importorskip("bpy")
    folder = photo_file.parent
    code = cli.main(["scene", str(photo_file), "-o", str(folder / "out" / "scene.blend"), "--irn", "irn-test",
                     "--depth-net", "depth-test", "--weights-dir", str(nets), "--max-side", "32", "--device", "cpu",
                     "--maps-dir", str(folder / "out" / "maps")])
    assert code == 0
    assert sorted(p.name for p in (folder / "out").iterdir()) == ["maps", "scene.blend"]
    assert sorted(p.name for p in (folder / "out" / "maps").iterdir()) == sorted(scene.CONTRACT_FILES)
    assert json.loads((folder / "out" / "maps" / "camera.json").read_text())["geometry_source"] == "networks"
    assert (folder / "out" / "scene.blend").stat().st_size > 0
    assert sorted(p.name for p in folder.iterdir()) == ["out", "photo.png"]


# ------------------------------------------------------------------------------------------------ relight


def _relight_args(photo_file, nets, *extra):
    return ["relight", str(photo_file), "--irn", "irn-test", "--depth-net", "depth-test", "--weights-dir", str(nets),
            "--max-side", "32", "--device", "cpu", "--no-refine", *extra]


def test_relight_writes_a_png_of_the_photo_size(photo_file, nets, capsys):
    out = photo_file.parent / "relit.png"
    assert cli.main(_relight_args(photo_file, nets, "-o", str(out), "--sun", "30", "110")) == 0
    from invrender_core.io import load_image

    relit = load_image(out).rgb
    assert relit.shape == (40, 56, 3) and np.isfinite(relit).all()
    assert "not refined" in capsys.readouterr().err
    assert sorted(p.name for p in photo_file.parent.iterdir()) == ["photo.png", "relit.png"]


def test_relight_sequence_as_pngs_and_mp4(photo_file, nets):
    folder = photo_file.parent
    assert cli.main(_relight_args(photo_file, nets, "-o", str(folder / "seq.png"), "--sun", "10", "60",
                                  "--to", "50", "200", "--frames", "3", "--sky-sample", "1")) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["photo.png", "seq_0001.png", "seq_0002.png", "seq_0003.png"]
    assert cli.main(_relight_args(photo_file, nets, "-o", str(folder / "seq.mp4"), "--sun", "10", "60",
                                  "--to", "50", "200", "--frames", "4")) == 0
    from invrender_core.io._cv import cv2

    video = cv2.VideoCapture(str(folder / "seq.mp4"))
    frames = 0
    while video.read()[0]:
        frames += 1
    video.release()
    assert frames == 4


def test_relight_mp4_of_an_odd_sized_photo_keeps_every_pixel(tmp_path, nets, capsys):
    """MPEG-4 needs even sizes: the last row and column are repeated, not dropped (the writer dropped them)."""
    rng = np.random.default_rng(1)
    write_png(tmp_path / "odd.png", (0.2 + 0.6 * rng.random((41, 57, 3))).astype(np.float32))
    args = ["--sun", "10", "60", "--to", "50", "200", "--frames", "2"]
    assert cli.main(_relight_args(tmp_path / "odd.png", nets, "-o", str(tmp_path / "seq.mp4"), *args)) == 0
    assert "57x41 padded to 58x42" in capsys.readouterr().err
    assert cli.main(_relight_args(tmp_path / "odd.png", nets, "-o", str(tmp_path / "seq.png"), *args)) == 0
    from invrender_core.io._cv import cv2

    video = cv2.VideoCapture(str(tmp_path / "seq.mp4"))
    ok, frame = video.read()
    video.release()
    assert ok and frame.shape == (42, 58, 3)
    png = cv2.imread(str(tmp_path / "seq_0001.png")).astype(np.float32)  # the same frame, exact

    def blurred(image):  # the codec keeps the coarse picture of this noise photo, not its pixels
        return cv2.GaussianBlur(image.astype(np.float32), (0, 0), 2.0)

    assert np.abs(blurred(frame[:41, :57]) - blurred(png)).mean() < 6
    assert np.abs(blurred(frame)[41] - blurred(frame)[40]).mean() < 6  # the last row, repeated


ARGPARSE_CASES = {"bad-sun-dir": "3 comma-separated numbers", "zero-sun-dir": "non-zero direction",
                  "zero-fps": "a number > 0", "no-shadow-samples": "an integer > 0"}


@pytest.mark.parametrize("case", ["frames-without-to", "mp4-single", "jpeg", "missing-refiner",
                                  "missing-shadow-refiner", "sky-not-lighting",
                                  "output-is-input", "sun-below-horizon", "sun-dir-below-horizon", "nan-azimuth",
                                  *ARGPARSE_CASES])
def test_relight_errors_are_one_line_exit_2_and_write_nothing(photo_file, nets, case, capsys, no_shipped_weights):
    folder = photo_file.parent
    photo_bytes = photo_file.read_bytes()
    args = _relight_args(photo_file, nets, "-o", str(folder / "relit.png"), "--sun", "30", "100")
    expected = {"frames-without-to": "--frames N needs", "mp4-single": "needs --frames", "jpeg": "write a .png",
                "missing-refiner": "no weights named", "missing-shadow-refiner": "no weights named 'no-such-net'",
                "sky-not-lighting": "9x3", "output-is-input": "also an input",
                "sun-below-horizon": "elevation in [0, 90]", "sun-dir-below-horizon": "below the horizon",
                "nan-azimuth": "finite azimuth", **ARGPARSE_CASES}[case]
    if case == "bad-sun-dir":
        args = [a for a in args if a not in ("--sun", "30", "100")] + ["--sun-dir", "1,2"]
    elif case == "zero-sun-dir":
        args = [a for a in args if a not in ("--sun", "30", "100")] + ["--sun-dir", "0,0,0"]
    elif case == "zero-fps":
        args[args.index("-o") + 1] = str(folder / "relit.mp4")
        args += ["--frames", "2", "--to", "40", "100", "--fps", "0"]
    elif case == "no-shadow-samples":
        args += ["--shadow-samples", "0"]
    elif case == "output-is-input":
        args[args.index("-o") + 1] = str(photo_file)
    elif case == "sun-below-horizon":
        args[args.index("--sun") + 1] = "-10"  # below the horizon: relighting would still light the scene
    elif case == "sun-dir-below-horizon":  # the same sun given as a direction (it was accepted and lit from below)
        args = [a for a in args if a not in ("--sun", "30", "100")] + ["--sun-dir", "1,-0.1,0"]
    elif case == "nan-azimuth":
        args[args.index("--sun") + 2] = "nan"
    elif case == "frames-without-to":
        args += ["--frames", "3"]
    elif case == "mp4-single":
        args[args.index("-o") + 1] = str(folder / "relit.mp4")
    elif case == "jpeg":
        args[args.index("-o") + 1] = str(folder / "relit.jpg")
    elif case == "missing-refiner":
        args.remove("--no-refine")
    elif case == "missing-shadow-refiner":
        args += ["--shadow-refine", "no-such-net"]
    else:
        (folder / "lighting.json").write_text(json.dumps({"sh": [[1.0, 1.0, 1.0]] * 4, "frame": "camera"}))
        args += ["--sky", str(folder / "lighting.json")]
    before = sorted(p.name for p in folder.iterdir())
    if case in ARGPARSE_CASES:  # argparse refuses it: usage line and exit 2
        with pytest.raises(SystemExit) as exit_info:
            cli.main(args)
        assert exit_info.value.code == 2 and expected in capsys.readouterr().err
    else:
        assert cli.main(args) == cli.EXIT_FAILURE
        assert expected in _one_error_line(capsys, "relight")
    assert sorted(p.name for p in folder.iterdir()) == before
    assert photo_file.read_bytes() == photo_bytes


def test_relight_of_an_hdr_photo_is_written_at_the_exposure_it_was_decomposed_at(photo_file, nets):
    from invrender_core.io import load_image

    hdr = photo_file.parent / "photo.exr"
    write_exr(hdr, load_image(photo_file).rgb * 1000.0)  # light far above 1, as a render or a bracket merge holds
    out = photo_file.parent / "relit.png"
    assert cli.main(_relight_args(hdr, nets, "-o", str(out), "--sun", "30", "110")) == 0
    relit = load_image(out).rgb
    assert (relit >= 1.0).all(axis=-1).mean() < 0.2  # not white: written at the photo's own exposure


def test_relight_sequence_appears_whole_or_not_at_all(photo_file, nets, capsys, monkeypatch):
    """A frame that fails to write leaves no frame of the sequence, and the files it would replace unchanged."""
    import invrender_core.io as io

    folder = photo_file.parent
    (folder / "seq_0001.png").write_bytes(b"the user's file")
    write_png_before, written = io.write_png, []

    def fail_on_second_frame(path, image):
        written.append(path)
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        write_png_before(path, image)

    monkeypatch.setattr(io, "write_png", fail_on_second_frame)
    args = _relight_args(photo_file, nets, "-o", str(folder / "seq.png"), "--sun", "10", "60", "--to", "50", "200",
                         "--frames", "3")
    assert cli.main(args) == cli.EXIT_FAILURE
    assert "No space left on device" in _one_error_line(capsys, "relight")
    assert sorted(p.name for p in folder.iterdir()) == ["photo.png", "seq_0001.png"]
    assert (folder / "seq_0001.png").read_bytes() == b"the user's file"


def test_relight_video_missing_frames_is_an_error(photo_file, nets, capsys, monkeypatch):
    """OpenCV's writer reports no failed write (a full disk): the written video is read back and counted."""
    from invrender_core.io._cv import cv2

    real_writer = cv2.VideoWriter

    class DroppingWriter:  # writes every other frame, as a writer that silently fails would lose them
        def __init__(self, *args):
            self.writer, self.calls = real_writer(*args), 0

        def isOpened(self):  # noqa: N802 - OpenCV's name
            return self.writer.isOpened()

        def write(self, frame):
            self.calls += 1
            if self.calls % 2:
                self.writer.write(frame)

        def release(self):
            self.writer.release()

    monkeypatch.setattr(cv2, "VideoWriter", DroppingWriter)
    folder = photo_file.parent
    args = _relight_args(photo_file, nets, "-o", str(folder / "seq.mp4"), "--sun", "10", "60", "--to", "50", "200",
                         "--frames", "4")
    assert cli.main(args) == cli.EXIT_FAILURE
    assert "holds 2 of 4 frames" in _one_error_line(capsys, "relight")
    assert sorted(p.name for p in folder.iterdir()) == ["photo.png"]


def test_atomic_output_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "new" / "deeper" / "out.png"
    with pytest.raises(RuntimeError), cli.atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("failed half way")
    assert list(tmp_path.iterdir()) == []  # neither the file nor the folders made for it
    (tmp_path / "kept").mkdir()
    with pytest.raises(cli.CLIError, match="is a folder"), cli.atomic_output(tmp_path / "kept"):
        pass
    with cli.atomic_output(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"


def test_fuse_and_scene_never_overwrite_their_inputs(plane_maps, capsys):
    folder, _ = plane_maps
    depth_bytes = (folder / "d.exr").read_bytes()
    code = cli.main(["fuse", "--depth", str(folder / "d.exr"), "--normal", str(folder / "n.exr"),
                     "--camera", str(folder / "camera.json"), "-o", str(folder / "d.exr")])
    assert code == cli.EXIT_FAILURE and "also an input" in _one_error_line(capsys, "fuse")
    assert (folder / "d.exr").read_bytes() == depth_bytes
    for output, expected in [("photo.png", "must name a .blend"), ("scene.blend", "must name a .png")]:
        code = cli.main(["scene", str(folder / "photo.png"), "-o", str(folder / output),
                         "--render", str(folder / "render.exr")])
        assert code == cli.EXIT_FAILURE and expected in _one_error_line(capsys, "scene")


def test_weights_list_shows_the_users_and_the_shipped_weights(tmp_path, capsys):
    assert cli.main(["weights", "list", "--weights-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"no weights registered in {tmp_path}" in out
    for name in weights.read_registry(weights.shipped_weights_dir() / weights.REGISTRY_FILE):
        assert any(line.startswith(f"{name}\t") and line.endswith("(shipped)") for line in out.splitlines())


@pytest.mark.parametrize(("box", "expected"), [("1,2,3", "4 comma-separated numbers X,Y,WIDTH,HEIGHT"),
                                               ("10,10,0,50", "positive width and height")])
def test_face_box_must_be_four_numbers_with_a_size(tmp_path, capsys, box, expected):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["face", str(tmp_path / "clip.mp4"), "--model", str(tmp_path / "m.bin"), "--export-npz",
                  str(tmp_path / "p.npz"), "--face-box", box])
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
