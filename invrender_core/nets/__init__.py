"""Network definitions (no weights): `depth` (MegaDepth hourglass), and `weights` (registry + safetensors).

Weights are described data (see `weights.py`): a registry of name -> file + sha256 + licence + card,
safetensors only, loaded on demand with `strict=True` and `eval()`.
"""
