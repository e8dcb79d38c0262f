"""Face: 3D morphable models, model fitting and video aggregation (Koizumi & Smith, ECCV 2020).

- `morphable_model`: the `MorphableModel` dataclass and loaders for the user's model file (Surrey Face
  Model cereal `.bin` from eos, or the documented InvRender `.npz`). Models are never shipped.
"""
