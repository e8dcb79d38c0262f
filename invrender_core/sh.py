"""Order-2 real spherical harmonics for Lambertian lighting (Ramamoorthi & Hanrahan 2001).

Conventions (DESIGN.md):

- Coefficients are a (9, 3) array: rows L00, L1-1, L10, L11, L2-2, L2-1, L20, L21, L22, columns RGB.
- `Y_lm` are the standard real orthonormal SH with the signs of RH's formula:
  Y00 = 0.282095; (Y1-1, Y10, Y11) = 0.488603 (y, z, x); (Y2-2, Y2-1, Y21) = 1.092548 (xy, yz, xz);
  Y20 = 0.315392 (3z² - 1); Y22 = 0.546274 (x² - y²).
- Shading: ``E(n) = basis(n) @ L = Σ A_l L_lm Y_lm(n)`` with A_0 = π, A_1 = 2π/3, A_2 = π/4, i.e. RH's closed
  form with c1..c5 = .429043, .511664, .743125, .886227, .247708.
- Units: the image model is ``image = albedo * shadow * E(n)``, so E is the radiance a white Lambertian
  surface reflects, i.e. irradiance / π. Hence L holds the SH coefficients of (environment radiance / π):
  a uniform environment of radiance 1 has L00 = 2√π / π and E = 1 everywhere. `to_equirect` multiplies
  by π to give true radiance, which Blender's diffuse BSDF (albedo / π · irradiance) turns back into
  exactly albedo · E(n).
- Flattened 27-vectors (priors, `fit_lighting`'s MAP term) are ``L.reshape(27)``: coefficient-major,
  RGB-minor, x[3 * k + c] = L[k, c].
- The frame of L is the frame of the normals it is used with: "camera" (x right, y up, z towards the
  viewer) for photos, "world" (Blender, z up) for environment maps; `CAMERA_TO_WORLD` links them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

# RH irradiance constants (DESIGN.md); c4 = π·Y00, 2·c2 = (2π/3)·0.488603, 2·c1 = (π/4)·1.092548, ...
C1, C2, C3, C4, C5 = 0.429043, 0.511664, 0.743125, 0.886227, 0.247708

# Orthonormal real SH constants.
_Y0 = 0.5 * math.sqrt(1.0 / math.pi)  # 0.282095
_Y1 = math.sqrt(3.0 / (4.0 * math.pi))  # 0.488603
_Y2 = 0.5 * math.sqrt(15.0 / math.pi)  # 1.092548 (xy, yz, xz)
_Y20 = 0.25 * math.sqrt(5.0 / math.pi)  # 0.315392 (3z² - 1)
_Y22 = 0.25 * math.sqrt(15.0 / math.pi)  # 0.546274 (x² - y²)

# Band of each of the 9 coefficients.
BANDS = np.array([0, 1, 1, 1, 2, 2, 2, 2, 2])

# Coefficients that change sign when the scene is mirrored left-right (x -> -x): Y_1,1 (x), Y_2,-2 (xy), Y_2,1 (xz).
X_ODD = (3, 4, 7)

# Linear Rec.709 / sRGB luminance weights, used to reduce RGB coefficients to one "brightness".
LUMINANCE = np.array([0.2126, 0.7152, 0.0722])

# Rotation taking camera-frame vectors to Blender world vectors for a level camera looking along +y world:
# camera x -> world x, camera y (up) -> world z, camera z (towards viewer) -> world -y.
# World-frame lighting for a camera-frame estimate: ``rotation(CAMERA_TO_WORLD) @ L_camera``;
# back: ``rotation(CAMERA_TO_WORLD.T) @ L_world``.
CAMERA_TO_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


class GaussianPrior(NamedTuple):
    """Gaussian on L.reshape(27): mean (27,), precision (27, 27) (fit_lighting: in its data-term units)."""

    mean: np.ndarray
    precision: np.ndarray


def _check_last(name: str, a: np.ndarray, n: int, expected: str) -> None:
    if a.ndim < 1 or a.shape[-1] != n:
        raise ValueError(f"{name} must have shape {expected}, got {a.shape}")


def _check_L(L) -> np.ndarray:
    L = np.asarray(L, dtype=np.float64)
    if L.shape != (9, 3):
        raise ValueError(f"L must have shape (9, 3), got {L.shape}")
    return L


def radiance_basis(dirs) -> np.ndarray:
    """Orthonormal real SH Y_lm of unit directions: (..., 3) -> (..., 9), float64, RH sign convention.

    Directions are used as given (not renormalised): the values are the degree-2 polynomials above.
    """
    d = np.asarray(dirs, dtype=np.float64)
    _check_last("dirs", d, 3, "(..., 3)")
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    return np.stack(
        [
            np.full_like(x, _Y0),
            _Y1 * y,
            _Y1 * z,
            _Y1 * x,
            _Y2 * x * y,
            _Y2 * y * z,
            _Y20 * (3.0 * z * z - 1.0),
            _Y2 * x * z,
            _Y22 * (x * x - y * y),
        ],
        axis=-1,
    )


def basis(normals, dtype=np.float64) -> np.ndarray:
    """RH irradiance basis of unit normals: (..., 3) -> (..., 9), of `dtype` (float64 by default), so that
    E(n) = basis(n) @ L.

    Includes the constants c1..c5, i.e. basis(n)[k] = A_l(k) · Y_k(n) (to RH's 6 printed digits).
    """
    n = np.asarray(normals, dtype=dtype)
    _check_last("normals", n, 3, "(..., 3)")
    x, y, z = n[..., 0], n[..., 1], n[..., 2]
    return np.stack(
        [
            np.full_like(x, C4),
            2.0 * C2 * y,
            2.0 * C2 * z,
            2.0 * C2 * x,
            2.0 * C1 * x * y,
            2.0 * C1 * y * z,
            C3 * z * z - C5,
            2.0 * C1 * x * z,
            C1 * (x * x - y * y),
        ],
        axis=-1,
    )


def shading(normals, L) -> np.ndarray:
    """Shading E(n) = basis(n) @ L: normals (..., 3), L (9, 3) -> (..., 3) float64."""
    return basis(normals) @ _check_L(L)


def shading_image(normals, L, block_pixels: int = 1 << 20) -> np.ndarray:
    """`shading` of a normal map (..., 3) as float32, for images: the basis in float32 and `block_pixels` pixels
    at a time (bounded temporaries) instead of 9 float64 maps at once: 2-3x faster at 24 MP, relative difference
    about 1e-7."""
    n = np.asarray(normals, dtype=np.float32)
    _check_last("normals", n, 3, "(..., 3)")
    L = _check_L(L).astype(np.float32)
    flat = n.reshape(-1, 3)
    out = np.empty(flat.shape, np.float32)
    for start in range(0, len(flat), block_pixels):
        np.matmul(basis(flat[start:start + block_pixels], np.float32), L, out=out[start:start + block_pixels])
    return out.reshape(n.shape)


# ----------------------------------------------------------------------------------------- rotation


def _fibonacci_sphere(n: int) -> np.ndarray:
    """(n, 3) near-uniform unit directions (deterministic)."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(1.0 - z * z)
    phi = math.pi * (1.0 + math.sqrt(5.0)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


_ROTATION_SAMPLES = _fibonacci_sphere(64)


def rotation(R) -> np.ndarray:
    """(9, 9) matrix M rotating SH lighting by the rotation R (3, 3).

    ``shading(normals @ R.T, M @ L) == shading(normals, L)``: rotating the scene (normals) and the lighting
    together by R leaves shading unchanged. M is block-diagonal per band and orthogonal. It solves
    ``Y(R d) M^T = Y(d)`` in least squares over 64 sample directions d, which is exact because each band
    is closed under rotation (and the per-band RH constants commute with M).
    """
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3):
        raise ValueError(f"R must have shape (3, 3), got {R.shape}")
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0:
        raise ValueError("R must be a proper rotation matrix (orthonormal, det +1)")
    d = _ROTATION_SAMPLES
    # Rotated lighting L' = M L must satisfy Y(R d) . (M L) = Y(d) . L for every d and L,
    # i.e. the row equations Y(R d)^T M = Y(d)^T stacked over the samples: A M = B.
    A = radiance_basis(d @ R.T)  # (64, 9)
    B = radiance_basis(d)  # (64, 9)
    M, *_ = np.linalg.lstsq(A, B, rcond=None)  # (9, 9)
    M[np.abs(M) < 1e-14] = 0.0  # exact zeros between bands
    return M


# ------------------------------------------------------------------------------ environment images


def _equirect_directions(width: int, height: int) -> np.ndarray:
    """(H, W, 3) world directions of equirect pixel centres in Cycles' mapping (row 0 = top = +z).

    Cycles (kernel/camera/projection.h, direction_to_equirectangular): u = (π - atan2(y, x)) / 2π,
    v = 1 - acos(z) / π, with image v = 0 at the bottom row. So column j has azimuth
    φ = π (1 - 2 (j + 0.5) / W) (the image centre looks along +x, a quarter from the left along +y) and
    row i (from the top) has polar angle θ = π (i + 0.5) / H.
    """
    theta = math.pi * (np.arange(height) + 0.5) / height
    phi = math.pi * (1.0 - 2.0 * (np.arange(width) + 0.5) / width)
    st = np.sin(theta)[:, None]
    return np.stack(
        [st * np.cos(phi)[None, :], st * np.sin(phi)[None, :], np.cos(theta)[:, None] * np.ones((1, width))],
        axis=-1,
    )


def _equirect_solid_angles(width: int, height: int) -> np.ndarray:
    """(H, 1) exact solid angle of one pixel in each row: (2π / W) (cos θ_top - cos θ_bottom)."""
    edges = np.cos(math.pi * np.arange(height + 1) / height)
    return ((2.0 * math.pi / width) * (edges[:-1] - edges[1:]))[:, None]


def to_equirect(L, width: int, height: int, clamp_negative: bool = True) -> np.ndarray:
    """Environment radiance image of world-frame lighting L (9, 3) -> (height, width, 3) float32.

    Blender's equirectangular mapping (world frame, z up, row 0 = top = +z, image centre = +x), sampled at
    pixel centres. Radiance = π · Σ L_lm Y_lm(d), so a Blender world using this image lights a Diffuse or
    Principled material of base colour `albedo` to albedo · E(n) (Blender's BSDF gives albedo / π ·
    irradiance).

    Clamping: an order-2 SH fitted to real lighting (a sun above all) rings negative on the far side; a
    world cannot emit negative light, so with ``clamp_negative=True`` (default) negative radiance is set to
    0. That only adds light, where the SH was negative, so Blender's shading is then brighter than E(n)
    on surfaces facing away from the light. Measured as the largest shading change over all normals
    relative to the peak shading (tests/test_sh.py, tests/test_illumination_prior.py): a bare sun 18 %;
    a sun plus a uniform sky of 10 % of its irradiance 2 %; sunny held-out skies of the illumination
    prior 12-15 %; the same after `extract_sun(L, 0.6)` moved most of the sun to a lamp, <= 5 %;
    overcast or other all-positive lighting 0. Pass ``clamp_negative=False`` for an exact (but
    unphysical, negative-valued) round trip.
    """
    L = _check_L(L)
    if width < 2 or height < 2:
        raise ValueError(f"equirect size must be at least 2x2, got {width}x{height}")
    rad = math.pi * (radiance_basis(_equirect_directions(width, height)) @ L)  # (H, W, 3)
    if clamp_negative:
        rad = np.maximum(rad, 0.0)
    return rad.astype(np.float32)


def from_equirect(image) -> np.ndarray:
    """SH lighting (9, 3) (radiance / π convention) of an equirect radiance image (H, W, 3).

    Computes (1/π) ∫ radiance · Y_lm dω with each pixel weighted by its exact solid angle, then corrects by
    the inverse of the discrete Gram matrix of the 9 functions on the grid, so it is the exact inverse of
    `to_equirect(..., clamp_negative=False)` for band-limited input at any resolution (and converges to
    the true projection for any input). Non-finite pixels raise ValueError.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 2 or img.shape[1] < 2:
        raise ValueError(f"image must have shape (H, W, 3) with H, W >= 2, got {img.shape}")
    if not np.all(np.isfinite(img)):
        raise ValueError("equirect image contains non-finite values")
    h, w = img.shape[:2]
    Y = radiance_basis(_equirect_directions(w, h)).reshape(-1, 9)  # (H*W, 9)
    dw = np.broadcast_to(_equirect_solid_angles(w, h), (h, w)).reshape(-1)  # (H*W,)
    gram = (Y * dw[:, None]).T @ Y  # (9, 9) ≈ identity
    proj = (Y * dw[:, None]).T @ img.reshape(-1, 3)  # (9, 3)
    return np.linalg.solve(gram, proj) / math.pi


def directional(direction, intensity) -> np.ndarray:
    """SH lighting (9, 3) of a distant point light (sun): radiance delta of integral `intensity` (3,).

    `intensity` is the irradiance the light gives a surface facing it (∫ radiance dω over the disc);
    direction (3,) points towards the light. Returns intensity / π · Y_lm(direction) (radiance / π).
    """
    d = np.asarray(direction, dtype=np.float64)
    if d.shape != (3,):
        raise ValueError(f"direction must have shape (3,), got {d.shape}")
    norm = np.linalg.norm(d)
    if not norm > 0:
        raise ValueError("direction must be non-zero")
    I = np.broadcast_to(np.asarray(intensity, dtype=np.float64), (3,))
    return np.outer(radiance_basis(d / norm), I) / math.pi


def dominant_direction(L, fallback=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Unit (3,) direction the light mostly comes from, in the frame of L (9, 3).

    The luminance-weighted order-1 coefficients (L11, L1-1, L10) are proportional to the mean light
    direction (x, y, z). Returns `fallback` (normalised) when they vanish (e.g. uniform lighting).
    """
    L = _check_L(L)
    lum = L @ LUMINANCE  # (9,)
    v = np.array([lum[3], lum[1], lum[2]])
    n = np.linalg.norm(v)
    if n < 1e-12 * max(1.0, abs(lum[0])):
        f = np.asarray(fallback, dtype=np.float64)
        return f / np.linalg.norm(f)
    return v / n


def extract_sun(L, fraction: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split lighting L (9, 3) into a distant sun and the rest: (direction (3,), irradiance (3,), rest (9, 3)).

    The sun points along `dominant_direction(L)`; its RGB `irradiance` is `fraction` (in [0, 1]) of the
    intensity of a point light that alone would produce L's order-1 part along that direction (clipped at
    0). In our units the sun adds ``irradiance * max(n · direction, 0)`` to E(n), and its SH is
    ``outer(radiance_basis(direction), irradiance)``, so ``rest + that == L`` exactly. (A Blender sun lamp
    of strength S and colour c gives this with S * c = π * irradiance.) `rest` may be negative in places.
    """
    L = _check_L(L)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    d = dominant_direction(L)
    order1 = np.stack([L[3], L[1], L[2]], axis=0)  # (3 xyz, 3 rgb)
    intensity = np.maximum(d @ order1, 0.0) / _Y1  # a delta i·Y(d) has order-1 part i·_Y1·d
    irradiance = fraction * intensity
    rest = L - np.outer(radiance_basis(d), irradiance)
    return d, irradiance, rest


# ------------------------------------------------------------------------------------ fitting

# Assumed pixel noise (image units, linear [0, 1]) when an IlluminationPrior is passed to fit_lighting:
# it sets how strongly the statistical prior pulls against the data.
PRIOR_PIXEL_NOISE = 0.02


_CHUNK = 1 << 18  # pixels per block in fit_lighting


def _pixel_weights(shape, mask, weights, name_shape) -> np.ndarray:
    w = np.ones(shape, dtype=np.float64)
    for name, m in (("mask", mask), ("weights", weights)):
        if m is None:
            continue
        m = np.asarray(m, dtype=np.float64)
        if m.shape == (*shape, 1):
            m = m[..., 0]
        if m.shape != shape:
            raise ValueError(f"{name} must have shape {shape} (image {name_shape} without channels), got {m.shape}")
        if np.any(m < 0) or not np.all(np.isfinite(m)):
            raise ValueError(f"{name} must be finite and non-negative")
        w = w * m
    return w


def _lum(L0) -> float:
    return float(np.asarray(L0) @ LUMINANCE)


def _normal_equations(image, albedo, normals, mask, shadow, weights):
    """Per-channel normal equations G (3, 9, 9), g (3, 9) and the number of valid pixels."""
    # Kept in their dtype (float32 photos stay small); chunks are converted to float64 below.
    image, albedo, normals = np.asarray(image), np.asarray(albedo), np.asarray(normals)
    _check_last("image", image, 3, "(..., 3) e.g. (H, W, 3)")
    if albedo.shape != image.shape:
        raise ValueError(f"albedo must have the image's shape {image.shape}, got {albedo.shape}")
    if normals.shape != image.shape:
        raise ValueError(f"normals must have the image's shape {image.shape}, got {normals.shape}")
    pix = image.shape[:-1]
    w = _pixel_weights(pix, mask, weights, image.shape)
    if shadow is not None:
        shadow = np.asarray(shadow)
        if shadow.shape == pix:
            shadow = shadow[..., None]
        if shadow.shape not in ((*pix, 1), image.shape):
            raise ValueError(f"shadow must have shape {pix}, {(*pix, 1)} or {image.shape}, got {shadow.shape}")
        shadow = shadow.reshape(-1, shadow.shape[-1])

    image = image.reshape(-1, 3)
    albedo = albedo.reshape(-1, 3)
    normals = normals.reshape(-1, 3)
    w = w.reshape(-1)
    G = np.zeros((3, 9, 9))
    g = np.zeros((3, 9))
    count = 0
    # Chunks bound the memory of the (N, 9) basis for full-resolution photos.
    for start in range(0, len(w), _CHUNK):
        sl = slice(start, start + _CHUNK)
        n = normals[sl].astype(np.float64)
        norm = np.linalg.norm(n, axis=-1)
        a = albedo[sl].astype(np.float64)  # (n, 3) effective albedo: albedo * shadow
        if shadow is not None:
            a = a * shadow[sl]
        y = image[sl].astype(np.float64)
        # Invalid pixels (background normals of length 0, NaNs) get weight 0 rather than poisoning the fit.
        valid = (np.isfinite(y).all(-1) & np.isfinite(a).all(-1) & np.isfinite(norm) & (norm > 1e-6)
                 & (w[sl] > 0))
        if not valid.any():
            continue
        wv, a, y = w[sl][valid], a[valid], y[valid]
        B = basis(n[valid] / norm[valid, None])  # (n, 9)
        for c in range(3):
            Bw = B * (wv * a[:, c])[:, None]
            G[c] += Bw.T @ (B * a[:, c : c + 1])
            g[c] += Bw.T @ y[:, c]
        count += int(np.count_nonzero(np.any(a != 0, axis=-1)))
    return G, g, count


def _well_posed(G) -> bool:
    """Whether a channel's (9, 9) normal matrix determines all 9 coefficients."""
    ev = np.linalg.eigvalsh(G)
    return bool(ev[-1] > 0 and ev[0] >= 1e-10 * ev[-1])


def _block(G) -> np.ndarray:
    """(3, 9, 9) per-channel matrices -> (27, 27) on L.reshape(27) (coefficient-major, RGB-minor)."""
    H = np.zeros((9, 3, 9, 3))
    for c in range(3):
        H[:, c, :, c] = G[c]
    return H.reshape(27, 27)


def _as_gaussian(prior):
    if isinstance(prior, tuple | list) and len(prior) == 2:
        mean, precision = prior
    else:
        mean, precision = prior.mean, prior.precision
    mean = np.asarray(mean, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if mean.shape not in ((27,), (9, 3)):
        raise ValueError(f"prior mean must have shape (27,) or (9, 3), got {mean.shape}")
    if precision.shape != (27, 27):
        raise ValueError(f"prior precision must have shape (27, 27), got {precision.shape}")
    return mean.reshape(27), precision


def fit_lighting(image, albedo, normals, mask=None, shadow=None, prior=None, weights=None) -> np.ndarray:
    """Least-squares SH lighting (9, 3) from image ≈ albedo * shadow * basis(normals) @ L.

    Shapes: image, albedo, normals (H, W, 3) (any leading shape (..., 3) works); mask, weights (H, W) or
    (H, W, 1), bool or non-negative float; shadow (H, W), (H, W, 1) or (H, W, 3). Normals are in the frame
    the lighting is wanted in (camera frame for photos) and are renormalised; pixels with zero-length or
    non-finite normals, or non-finite values, are ignored.

    Minimises ``Σ_i w_i Σ_c (image_ic - a_ic basis(n_i) · L[:, c])² + (x - μ)^T P (x - μ)`` with
    a = albedo * shadow, w = mask * weights, x = L.reshape(27) (coefficient-major, RGB-minor) and the prior
    term only when `prior` is given:

    - an object with ``mean`` (27,) or (9, 3) and ``precision`` (27, 27) (or a (mean, precision) pair),
      in the units of the data term above (precision = pixel-noise variance / lighting variance); or
    - an `IlluminationPrior` (camera frame, exposure-normalised): its scale is set from the data
      (DC luminance of the current estimate, refined 3 times) and its covariance is scaled to it, against
      pixel noise `PRIOR_PIXEL_NOISE` (for weights of 1).

    Raises ValueError when fewer than 9 pixels are usable or the normals do not constrain all 9
    coefficients of a channel (e.g. a flat plane) and no prior is given.
    """
    G, g, count = _normal_equations(image, albedo, normals, mask, shadow, weights)
    if prior is None:
        if count < 9:
            raise ValueError(f"too few valid pixels to fit 9 SH coefficients: {count} (need >= 9); pass a prior")
        L = np.zeros((9, 3))
        for c in range(3):
            if not _well_posed(G[c]):
                raise ValueError(
                    f"lighting is not determined by the data (channel {'RGB'[c]}: normals or albedo do not "
                    "constrain all 9 coefficients, e.g. too few distinct normals); pass a prior"
                )
            L[:, c] = np.linalg.solve(G[c], g[c])
        return L

    H = _block(G)  # (27, 27)
    rhs = g.T.reshape(27)  # (9, 3) -> coefficient-major
    if hasattr(prior, "gaussian"):
        return _fit_with_illumination_prior(prior, H, rhs, G, g, count)
    mean, precision = _as_gaussian(prior)
    return np.linalg.solve(H + precision, rhs + precision @ mean).reshape(9, 3)


def _fit_with_illumination_prior(prior, H, rhs, G, g, count) -> np.ndarray:
    # First guess of the exposure: the unregularised fit when it is well posed, else a DC-only fit.
    scale = None
    if count >= 9 and all(_well_posed(G[c]) for c in range(3)):
        scale = _lum(np.linalg.solve(H, rhs).reshape(9, 3)[0])
    if scale is None or not scale > 0:
        dc = np.array([g[c, 0] / G[c, 0, 0] if G[c, 0, 0] > 0 else 0.0 for c in range(3)])
        scale = _lum(dc)
    if not scale > 0:
        raise ValueError("cannot set the illumination prior's scale: the image has no positive signal")
    L = None
    for _ in range(3):
        mean, precision = prior.gaussian(scale=scale)
        P = PRIOR_PIXEL_NOISE**2 * np.asarray(precision)
        L = np.linalg.solve(H + P, rhs + P @ np.asarray(mean).reshape(27)).reshape(9, 3)
        new_scale = _lum(L[0])
        if not new_scale > 0:
            break
        scale = new_scale
    return L


def basis_torch(normals):
    """Torch twin of `basis` for image batches: unit normals (B, 3, H, W) -> (B, 9, H, W), differentiable."""
    import torch

    x, y, z = normals[:, 0], normals[:, 1], normals[:, 2]  # (B, H, W)
    return torch.stack([torch.full_like(x, C4), 2 * C2 * y, 2 * C2 * z, 2 * C2 * x, 2 * C1 * x * y,
                        2 * C1 * y * z, C3 * z * z - C5, 2 * C1 * x * z, C1 * (x * x - y * y)], dim=1)


def shading_torch(normals, L):
    """Torch twin of `shading`: normals (B, 3, H, W), lighting (B, 9, 3) -> E(n) (B, 3, H, W)."""
    import torch

    return torch.einsum("bkhw,bkc->bchw", basis_torch(normals), L)


def fit_lighting_torch(image, albedo, normals, mask=None, shadow=None, prior_mean=None, prior_precision=None,
                       ridge: float = 1e-6):
    """Differentiable batched `fit_lighting`: returns L (B, 9, 3) in the dtype of `image`.

    Shapes: image, albedo, normals (B, 3, H, W); mask (B, 1, H, W) (bool or float weights); shadow
    (B, 1, H, W) or (B, 3, H, W); prior_mean (27,), (B, 27), (9, 3) or (B, 9, 3); prior_precision (27, 27) or
    (B, 27, 27), same units as `fit_lighting`. Normals are renormalised; zero-length normals are ignored.
    Solves the normal equations with torch.linalg.solve plus a ridge of ``ridge * mean(diag)`` (relative,
    so it is scale-free) to stay finite when a batch item is degenerate; gradients flow to all inputs.
    """
    import torch

    image = torch.as_tensor(image)
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must have shape (B, 3, H, W), got {tuple(image.shape)}")
    b, _, h, w_ = image.shape
    albedo = torch.as_tensor(albedo, dtype=image.dtype)
    normals = torch.as_tensor(normals, dtype=image.dtype)
    for name, t in (("albedo", albedo), ("normals", normals)):
        if tuple(t.shape) != tuple(image.shape):
            raise ValueError(f"{name} must have the image's shape {tuple(image.shape)}, got {tuple(t.shape)}")
    weight = torch.ones((b, 1, h, w_), dtype=image.dtype, device=image.device)
    if mask is not None:
        mask = torch.as_tensor(mask).to(image.dtype)
        if tuple(mask.shape) != (b, 1, h, w_):
            raise ValueError(f"mask must have shape {(b, 1, h, w_)}, got {tuple(mask.shape)}")
        weight = weight * mask
    if shadow is not None:
        shadow = torch.as_tensor(shadow, dtype=image.dtype)
        if tuple(shadow.shape) not in ((b, 1, h, w_), (b, 3, h, w_)):
            raise ValueError(f"shadow must have shape {(b, 1, h, w_)} or {(b, 3, h, w_)}, got {tuple(shadow.shape)}")
        albedo = albedo * shadow

    norm = normals.norm(dim=1, keepdim=True)  # (B, 1, H, W)
    weight = weight * (norm.detach() > 1e-6).to(image.dtype)
    n = normals / norm.clamp_min(1e-6)
    B_ = basis_torch(n).reshape(b, 9, -1)  # (B, 9, N)
    a = albedo.reshape(b, 3, -1)  # (B, 3, N)
    wt = weight.reshape(b, 1, -1)  # (B, 1, N)
    img = image.reshape(b, 3, -1)  # (B, 3, N)
    G = torch.einsum("bn,bcn,bkn,bln->bckl", wt[:, 0], a * a, B_, B_)  # (B, 3, 9, 9)
    g = torch.einsum("bn,bcn,bkn,bcn->bck", wt[:, 0], a, B_, img)  # (B, 3, 9)
    eye9 = torch.eye(9, dtype=image.dtype, device=image.device)

    if prior_mean is None and prior_precision is None:
        diag = torch.diagonal(G, dim1=-2, dim2=-1).mean(-1)[..., None, None]  # (B, 3, 1, 1)
        Gr = G + ridge * diag * eye9
        L = torch.linalg.solve(Gr, g.unsqueeze(-1)).squeeze(-1)  # (B, 3, 9)
        return L.transpose(1, 2)  # (B, 9, 3)
    if prior_mean is None or prior_precision is None:
        raise ValueError("pass both prior_mean and prior_precision, or neither")
    mu = torch.as_tensor(prior_mean, dtype=image.dtype, device=image.device)
    P = torch.as_tensor(prior_precision, dtype=image.dtype, device=image.device)
    if tuple(mu.shape) in ((9, 3), (b, 9, 3)):
        mu = mu.reshape(*mu.shape[:-2], 27)
    if tuple(mu.shape) not in ((27,), (b, 27)):
        raise ValueError(f"prior_mean must have shape (27,), ({b}, 27), (9, 3) or ({b}, 9, 3), got {tuple(mu.shape)}")
    if tuple(P.shape) not in ((27, 27), (b, 27, 27)):
        raise ValueError(f"prior_precision must have shape (27, 27) or ({b}, 27, 27), got {tuple(P.shape)}")
    mu = mu.expand(b, 27)
    P = P.expand(b, 27, 27)
    eye3 = torch.eye(3, dtype=image.dtype, device=image.device)
    H = torch.einsum("bckl,cd->bkcld", G, eye3).reshape(b, 27, 27)  # coefficient-major, RGB-minor
    rhs = g.transpose(1, 2).reshape(b, 27) + (P @ mu.unsqueeze(-1)).squeeze(-1)
    A = H + P
    diag = torch.diagonal(A, dim1=-2, dim2=-1).mean(-1)[..., None, None]
    A = A + ridge * diag * torch.eye(27, dtype=image.dtype, device=image.device)
    return torch.linalg.solve(A, rhs.unsqueeze(-1)).squeeze(-1).reshape(b, 9, 3)


OBSERVED_PIXELS = 20000  # pixels `observed_lighting` fits to (evenly spread)


def observed_lighting(normals, L, mask=None, max_pixels: int = OBSERVED_PIXELS, toward=None,
                      weight: float = 0.0) -> np.ndarray:
    """Order-1 SH lighting (9, 3) (order-2 rows zero, non-negative radiance) fitted by least squares to the
    shading that lighting L (9, 3) gives the photo's normals (H, W, 3) over `mask` (H, W) (default all).

    A photo shows its surfaces' normals only over the half of the sphere facing the camera, and mostly near its
    centre: an estimate's order-2 terms are barely constrained and can be wild elsewhere, which turning the
    lighting brings into view. What the photo does pin down, its mean level and main gradient, is order 1. The
    order-1 part is then shortened where needed so the radiance is nowhere negative (|L1| Y1 <= L00 Y0).

    With `toward` (9, 3) (e.g. the illumination prior's mean) and `weight` > 0, the fit is shrunk towards the
    order-0/1 part of `toward` scaled per channel to the unshrunk fit's mean level: a ridge of `weight` times the
    mean diagonal of the normal equations. Estimated normals can mislead the fit about the light's direction.
    """
    normals = np.asarray(normals)  # converted to float64 after subsampling: at 24 MP a copy is 576 MB
    L = np.asarray(L, dtype=np.float64)
    if normals.ndim != 3 or normals.shape[2] != 3 or L.shape != (9, 3):
        raise ValueError(f"normals must be (H, W, 3) and L (9, 3), got {normals.shape} and {L.shape}")
    mask = np.ones(normals.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != normals.shape[:2]:
        raise ValueError(f"mask has shape {mask.shape}, expected {normals.shape[:2]}")
    index = np.flatnonzero(mask & np.isfinite(normals).all(-1))
    if index.size < 4:
        raise ValueError("too few pixels with normals to fit lighting to")
    index = index[:: max(1, index.size // max_pixels)]
    n = normals.reshape(-1, 3)[index].astype(np.float64)  # (N, 3)
    photo_shading = np.maximum(shading(n, L), 0.0)  # (N, 3) as the photo's model shades them
    A = basis(n)[:, :4]  # (N, 4): order 0 and 1
    G, rhs = A.T @ A, A.T @ photo_shading  # (4, 4), (4, 3)
    level = np.trace(G) / 4.0
    L = np.zeros((9, 3))
    L[:4] = np.linalg.solve(G + 1e-6 * level * np.eye(4), rhs)  # (4, 3)
    if toward is not None and weight > 0:
        toward = np.asarray(toward, dtype=np.float64)
        if toward.shape != (9, 3) or not (toward[0] > 0).all():
            raise ValueError(f"toward must be (9, 3) lighting with positive mean radiance, got {toward.shape}")
        target = toward[:4] * (L[0] / toward[0])  # (4, 3): its shape at the fit's mean level
        L[:4] = np.linalg.solve(G + weight * level * np.eye(4), rhs + weight * level * target)
    # Radiance ∝ Y0 L00 + Y1 (L1 · d) >= 0 for every d iff |L1| Y1 <= L00 Y0 (per channel).
    length = np.linalg.norm(L[1:4], axis=0)  # (3,)
    limit = np.maximum(L[0], 0.0) * _Y0 / _Y1
    L[1:4] *= np.minimum(1.0, limit / np.maximum(length, 1e-12))
    L[0] = np.maximum(L[0], 0.0)
    return L
