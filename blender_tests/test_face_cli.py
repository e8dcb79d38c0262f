"""`invrender face`: a video -> rig.blend + params.npz; bad input -> exit 2, one line, nothing written."""

from pathlib import Path

import bpy
import numpy as np
import pytest

from invrender_core import cli
from invrender_core.face.pipeline import DEFAULT_FACE_WEIGHTS
from invrender_core.face.rig import load_npz
from invrender_core.io._cv import cv2
from invrender_core.nets import weights

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL = DATA / "eos" / "sfm_shape_3448.bin"
VIDEO = DATA / "videos" / "liveportrait_d3.mp4"
pytestmark = [
    pytest.mark.skipif(not (MODEL.exists() and VIDEO.exists()), reason="../shared/data not available"),
    pytest.mark.skipif(DEFAULT_FACE_WEIGHTS not in weights.read_registry(
        weights.shipped_weights_dir() / weights.REGISTRY_FILE), reason="face-corr-small not shipped"),
]


def test_face_cli_writes_rig_and_parameters(tmp_path):
    blend, params = tmp_path / "out" / "rig.blend", tmp_path / "out" / "params.npz"
    code = cli.main(["face", str(VIDEO), "--model", str(MODEL), "-o", str(blend), "--export-npz", str(params),
                     "--end", "6", "--step", "2"])
    assert code == 0
    assert sorted(p.name for p in blend.parent.iterdir()) == ["params.npz", "rig.blend"]
    rig = load_npz(params)
    with np.load(params, allow_pickle=False) as z:
        assert z["vertices"].shape == (3, 3448, 3) and list(z["frames"]) == [0, 2, 4]
        assert z["expression"].shape == (3, 6) and z["sh"].shape == (3, 9, 3) and z["identity"].shape == (63,)
        np.testing.assert_allclose(z["vertices"], rig.vertices(), atol=1e-4)
        # The Surrey expression blendshapes beside the model were picked up automatically.
        assert list(z["expression_names"]) == ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    meshes = [o for o in bpy.data.objects if o.type == "MESH"]
    assert len(meshes) == 1 and len(meshes[0].data.vertices) == 3448
    assert [k.name for k in meshes[0].data.shape_keys.key_blocks][1:] == [
        "Exp00 anger", "Exp01 disgust", "Exp02 fear", "Exp03 happiness", "Exp04 sadness", "Exp05 surprise"]
    assert (bpy.context.scene.frame_start, bpy.context.scene.frame_end) == (1, 5)


def test_face_cli_bad_input_writes_nothing(tmp_path, capsys):
    grey = tmp_path / "grey"
    grey.mkdir()
    for k in range(3):
        cv2.imwrite(str(grey / f"f{k}.png"), np.full((96, 96, 3), 128, np.uint8))
    text_model = tmp_path / "model.bin"
    text_model.write_text("not a model")
    corrupt = tmp_path / "clip.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    cases = [([str(VIDEO), "--model", str(text_model)], "model.bin"),
             ([str(corrupt), "--model", str(MODEL)], "clip.mp4"),
             ([str(grey), "--model", str(MODEL)], "no face found"),
             ([str(VIDEO), "--model", str(MODEL), "--face-box", "5000,10,100,100"], "reaches outside")]
    for args, expected in cases:
        out = tmp_path / "out"
        code = cli.main(["face", *args, "-o", str(out / "rig.blend"), "--export-npz", str(out / "p.npz")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == cli.EXIT_FAILURE
        assert expected in err[-1] and err[-1].startswith("invrender face: error:")
        assert not out.exists() or not any(out.iterdir())
