"""Statistical model of natural outdoor illumination: a Gaussian (mean + PCA) over order-2 SH lighting.

Data: `invrender_core/data/illumination_prior.npz`, described by the card `illumination_prior.json` next
to it (how it was built: Blender's physical Nishita sky and CIE overcast skies rendered by
datagen/render_skies.py, projected and fitted by datagen/fit_illumination_prior.py).

Frame: the CAMERA frame of a level camera (x right, y up = world up, z towards the viewer), with the
camera's heading uniformly distributed (16 rotations about the vertical per sky). The coefficients
follow `invrender_core.sh` (radiance / π, (9, 3), order L00 ... L22); vectors are L.reshape(27)
(coefficient-major, RGB-minor).

Normalisation: a photo's exposure is unknown, so every lighting is divided by its DC luminance
``s(L) = LUMINANCE @ L[0]`` (Rec.709 weights on the L00 row) before it enters the model: all model
samples have s = 1 exactly. `log_prob` and `project` apply the same normalisation to their input (and
`project` scales its result back); `sample` returns normalised lighting. Because s = 1 for every
training sample, the model's covariance is singular along that direction; it is regularised by a
variance floor (stored with the data) wherever a proper density or precision is needed.

Colour: linear Rec.709 as Cycles renders the skies, not white-balanced (the mean is warm, as sunlight
dominates); photos are usually white-balanced, so expect the prior's colour to be its weakest part.
"""

from __future__ import annotations

import importlib.resources
import json
import math
from pathlib import Path

import numpy as np

from .sh import LUMINANCE, GaussianPrior

DATA_NAME = "illumination_prior.npz"
CARD_NAME = "illumination_prior.json"


def normalise(L) -> tuple[np.ndarray, np.ndarray]:
    """Divide lighting (..., 9, 3) by its DC luminance; returns (normalised (..., 9, 3), scale (...)).

    Scales that are not positive (no physical lighting has a non-positive mean radiance) give NaN
    normalised lighting.
    """
    L = np.asarray(L, dtype=np.float64)
    if L.shape[-2:] != (9, 3):
        raise ValueError(f"L must have shape (9, 3) or (..., 9, 3), got {L.shape}")
    scale = L[..., 0, :] @ LUMINANCE  # (...)
    safe = np.where(scale > 0, scale, np.nan)
    return L / safe[..., None, None], scale


class IlluminationPrior:
    """Gaussian model of exposure-normalised camera-frame SH lighting.

    Attributes: ``mean`` (27,), ``components`` (K, 27) orthonormal rows sorted by decreasing variance,
    ``variances`` (K,), ``variance_floor`` (scalar, the regularising variance), ``card`` (dict, may be
    empty).
    """

    frame = "camera"

    def __init__(self, mean, components, variances, variance_floor: float, card: dict | None = None):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.components = np.asarray(components, dtype=np.float64)
        self.variances = np.asarray(variances, dtype=np.float64)
        if self.mean.shape != (27,):
            raise ValueError(f"mean must have shape (27,), got {self.mean.shape}")
        k = self.components.shape[0] if self.components.ndim == 2 else -1
        if self.components.ndim != 2 or self.components.shape[1] != 27 or not 1 <= k <= 27:
            raise ValueError(f"components must have shape (K, 27) with 1 <= K <= 27, got {self.components.shape}")
        if self.variances.shape != (k,):
            raise ValueError(f"variances must have shape ({k},) to match components, got {self.variances.shape}")
        if not variance_floor > 0:
            raise ValueError(f"variance_floor must be positive, got {variance_floor}")
        self.variance_floor = float(variance_floor)
        self.card = dict(card or {})
        cov = self.covariance()
        self._precision = np.linalg.inv(cov)
        self._precision = 0.5 * (self._precision + self._precision.T)
        self._logdet = float(np.linalg.slogdet(cov)[1])

    @classmethod
    def load(cls, path=None) -> IlluminationPrior:
        """Load the packaged prior (default) or an npz written by datagen/fit_illumination_prior.py."""
        if path is None:
            res = importlib.resources.files("invrender_core") / "data" / DATA_NAME
            with importlib.resources.as_file(res) as p:
                return cls.load(p)
        path = Path(path)
        with np.load(path, allow_pickle=False) as z:
            frame = str(z["frame"]) if "frame" in z.files else "camera"
            if frame != "camera":
                raise ValueError(f"{path}: expected a camera-frame prior, got frame {frame!r}")
            prior = cls(z["mean"], z["components"], z["variances"], float(z["variance_floor"]))
        card_path = path.with_suffix(".json")
        if card_path.exists():
            prior.card = json.loads(card_path.read_text())
        return prior

    @property
    def mean_lighting(self) -> np.ndarray:
        """The mean normalised lighting as SH (9, 3), camera frame: the prior's typical light for a level camera."""
        return self.mean.reshape(9, 3)

    def covariance(self) -> np.ndarray:
        """(27, 27) regularised covariance of normalised lighting: variances below the floor (and any
        direction outside the K components) get the floor."""
        C = self.components
        v = np.maximum(self.variances, self.variance_floor)
        return C.T @ (v[:, None] * C) + self.variance_floor * (np.eye(27) - C.T @ C)

    def gaussian(self, scale: float = 1.0) -> GaussianPrior:
        """(mean (27,), precision (27, 27)) of lighting with DC luminance `scale` (covariance scale²·Σ).

        For `sh.fit_lighting`'s prior multiply the precision by the pixel-noise variance (fit_lighting does
        this itself, with `sh.PRIOR_PIXEL_NOISE`, when given the IlluminationPrior directly).
        """
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        return GaussianPrior(self.mean * scale, self._precision / scale**2)

    def log_prob(self, L) -> np.ndarray | float:
        """Gaussian log density (natural log) of normalised lighting: L (9, 3) -> float, (N, 9, 3) -> (N,).

        L is in the camera frame (see module docstring) and is first divided by its DC luminance, so the
        value is the density of the normalised 27-vector under N(mean, regularised covariance); exposure
        is not scored. Lighting with non-positive DC luminance gets -inf.
        """
        Ln, _ = normalise(L)
        d = Ln.reshape(*Ln.shape[:-2], 27) - self.mean  # (..., 27)
        m = np.einsum("...i,ij,...j->...", d, self._precision, d)
        lp = -0.5 * (m + self._logdet + 27 * math.log(2.0 * math.pi))
        lp = np.where(np.isfinite(lp), lp, -np.inf)
        return float(lp) if lp.ndim == 0 else lp

    def project(self, L, k: int | None = None) -> np.ndarray:
        """Reconstruction of L (9, 3) from the mean and the first k components (all when k is None).

        L is normalised by its DC luminance, projected, and scaled back, so the result has L's exposure.
        With all 27 components it reproduces L.
        """
        L = np.asarray(L, dtype=np.float64)
        if L.shape != (9, 3):
            raise ValueError(f"L must have shape (9, 3), got {L.shape}")
        k = self.components.shape[0] if k is None else int(k)
        if not 0 <= k <= self.components.shape[0]:
            raise ValueError(f"k must be in [0, {self.components.shape[0]}], got {k}")
        Ln, scale = normalise(L)
        if not scale > 0:
            raise ValueError("L has non-positive DC luminance: it cannot be normalised")
        C = self.components[:k]  # (k, 27)
        x = self.mean + C.T @ (C @ (Ln.reshape(27) - self.mean))
        return x.reshape(9, 3) * scale

    def sample(self, n: int, rng=None) -> np.ndarray:
        """(n, 9, 3) normalised lighting drawn from the (unregularised) Gaussian; rng: seed or Generator."""
        rng = np.random.default_rng(rng)
        z = rng.standard_normal((int(n), self.components.shape[0]))  # (n, K)
        x = self.mean + (z * np.sqrt(np.maximum(self.variances, 0.0))) @ self.components  # (n, 27)
        return x.reshape(-1, 9, 3)
