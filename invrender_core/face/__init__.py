"""Face: 3D morphable models, model fitting and video aggregation (Koizumi & Smith, ECCV 2020).

- `morphable_model`: the `MorphableModel` dataclass and loaders for the user's model file (Surrey Face Model
  cereal `.bin` from eos, BFM 2009 `.mat`, BFM 2017 `.h5`, FLAME `.pkl`, or the documented InvRender `.npz`).
  Models are never shipped.
- `render`: z-buffer rasteriser, template coordinates of the mean shape and their surface lookup.
- `synthetic`: faces rendered from the model with known parameters (training data, evaluation videos).
- `fit`: least-squares shape, pose and focal from dense correspondences; inverse SH lighting.
- `video`: frames in, face detection and tracking, crops, temporal smoothing.
- `texture`: the albedo texture aggregated over frames.
- `rig`: `FaceRig`, the fitted animated face (and its `.npz`).
- `pipeline`: video -> `FaceRig` (`fit_face`), what `invrender face` and the add-on run.
"""
