"""Fit the illumination prior (invrender_core/data/illumination_prior.npz + .json card) to rendered skies.

Reproduce (seconds; needs the skies from datagen/render_skies.py):
    .venv/bin/python datagen/render_skies.py --out datagen/out/skies --count 400 --seed 0
    .venv/bin/python datagen/fit_illumination_prior.py --skies datagen/out/skies --out invrender_core/data --seed 0

Steps, per rendered sky (world frame, z up):
1. Ground: the renders are dark below the horizon; that half is replaced by a Lambertian ground of
   albedo rho (uniform in GROUND_ALBEDO, slightly tinted) lit by the upper hemisphere and the sun:
   radiance rho * E_horizontal / pi.
2. SH: L = sh.from_equirect(sky) + visibility * sh.directional(sun direction, sun irradiance) (the sun
   disc, measured separately by the renderer, enters as a delta).
3. Augment: 16 rotations about the vertical (22.5 degrees apart, random offset per sky), i.e. 16 camera
   headings; convert to the camera frame of a level camera: rotation(CAMERA_TO_WORLD.T) @ L.
4. Normalise each lighting by its DC luminance (LUMINANCE @ L[0] = 1).
5. Mean + PCA (all 27 components) on the training skies; 10 % of the skies (all their rotations) are held
   out to report reconstruction error and log-likelihood in the card.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

from invrender_core import sh
from invrender_core.geometry import rotation_z
from invrender_core.illumination_prior import IlluminationPrior, normalise

ROTATIONS = 16
GROUND_ALBEDO = (0.1, 0.3)
GROUND_TINT = 0.1  # per-channel relative tint, uniform in [-GROUND_TINT, GROUND_TINT]
HELDOUT_FRACTION = 0.1
# Regularising variance: a small fraction of the largest variance. Order-2 SH of real skies has every
# direction but the (fixed) DC luminance clearly above this (see the card's variances).
VARIANCE_FLOOR_RELATIVE = 1e-4


def sky_lighting(img: np.ndarray, record: dict, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """World-frame SH (9, 3) of one rendered sky with ground bounce and sun added."""
    h, w, _ = img.shape
    img = img.astype(np.float64).copy()
    theta = math.pi * (np.arange(h) + 0.5) / h
    dw = sh._equirect_solid_angles(w, h)  # (H, 1)
    upper = slice(0, h // 2)
    e_sky = (img[upper] * (np.cos(theta[upper])[:, None, None] * dw[upper, :, None])).sum(axis=(0, 1))
    vis = float(record.get("sun_visibility", 0.0))
    e_sun = np.zeros(3)
    if "sun_irradiance" in record:
        sun_dir = np.asarray(record["sun_direction"])
        e_sun = vis * np.asarray(record["sun_irradiance"]) * max(sun_dir[2], 0.0)
    rho = rng.uniform(*GROUND_ALBEDO) * (1.0 + rng.uniform(-GROUND_TINT, GROUND_TINT, 3))
    img[h // 2:] = rho * (e_sky + e_sun) / math.pi
    L = sh.from_equirect(img)
    if "sun_irradiance" in record:
        L = L + sh.directional(record["sun_direction"], vis * np.asarray(record["sun_irradiance"]))
    return L, {"ground_albedo": rho.tolist()}


def pca(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean (27,), components (27, 27) rows by decreasing variance, variances (27,)."""
    mean = X.mean(axis=0)
    cov = np.cov(X - mean, rowvar=False)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    # Deterministic signs: the largest-magnitude entry of each component is positive.
    signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(27)])
    return mean, (vecs * signs).T, np.maximum(vals, 0.0)


def shading_error(L_true: np.ndarray, L_est: np.ndarray) -> float:
    """RMS shading difference over the sphere of normals relative to RMS shading (per-luminance)."""
    n = sh._fibonacci_sphere(2000)
    a = sh.shading(n, L_true) @ sh.LUMINANCE
    b = sh.shading(n, L_est) @ sh.LUMINANCE
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(a**2)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skies", type=Path, default=Path("datagen/out/skies"))
    ap.add_argument("--out", type=Path, default=Path("invrender_core/data"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    index = json.loads((args.skies / "index.json").read_text())
    records = index["skies"]
    rng = np.random.default_rng(args.seed)
    n_sky = len(records)
    heldout = np.zeros(n_sky, dtype=bool)
    heldout[rng.permutation(n_sky)[: max(1, int(round(HELDOUT_FRACTION * n_sky)))]] = True

    M_cam = sh.rotation(sh.CAMERA_TO_WORLD.T)  # world -> camera
    train, test = [], []
    for i, rec in enumerate(records):
        L_world, _ = sky_lighting(np.load(args.skies / rec["file"]), rec, rng)
        offset = rng.uniform(0.0, 2.0 * math.pi / ROTATIONS)
        for r in range(ROTATIONS):
            L = M_cam @ sh.rotation(rotation_z(offset + 2.0 * math.pi * r / ROTATIONS)) @ L_world
            Ln, scale = normalise(L)
            if not scale > 0:
                raise RuntimeError(f"sky {rec['file']} has non-positive DC luminance")
            (test if heldout[i] else train).append(Ln.reshape(27))
    X, Xt = np.array(train), np.array(test)
    mean, components, variances = pca(X)
    floor = VARIANCE_FLOOR_RELATIVE * variances[0]
    prior = IlluminationPrior(mean, components, variances, floor)

    explained = np.cumsum(variances) / variances.sum()
    recon = {}
    for k in (0, 1, 2, 3, 4, 6, 8, 12, 16, 27):
        errs = [shading_error(x.reshape(9, 3), prior.project(x.reshape(9, 3), k)) for x in Xt]
        recon[str(k)] = {"median": round(float(np.median(errs)), 4), "p90": round(float(np.quantile(errs, 0.9)), 4)}
    lp_test = prior.log_prob(Xt.reshape(-1, 9, 3))
    lp_train = prior.log_prob(X.reshape(-1, 9, 3))

    # A few held-out skies (one heading each) ship with the data as fixtures for tests and examples.
    pick = np.arange(0, len(Xt), ROTATIONS)[:4]  # first heading of the first 4 held-out skies
    examples = Xt[pick].reshape(-1, 9, 3)

    args.out.mkdir(parents=True, exist_ok=True)
    npz_path = args.out / "illumination_prior.npz"
    np.savez_compressed(
        npz_path, mean=mean, components=components, variances=variances, variance_floor=np.float64(floor),
        heldout_examples=examples, frame=np.array("camera"),
    )
    cats = {}
    for rec in records:
        cats[rec["category"]] = cats.get(rec["category"], 0) + 1
    card = {
        "name": "illumination_prior",
        "description": "Gaussian (mean + PCA) model of outdoor illumination as order-2 SH, for MAP lighting "
                       "fits (invrender_core.illumination_prior.IlluminationPrior).",
        "file": npz_path.name,
        "sha256": hashlib.sha256(npz_path.read_bytes()).hexdigest(),
        "licence": "GPL-3.0-or-later (generated by this project with Blender's Nishita sky model)",
        "frame": "camera of a level camera: x right, y up (= world up), z towards the viewer; headings uniform",
        "convention": "ramamoorthi-hanrahan; coefficients of radiance / pi; (9, 3) order L00, L1-1, L10, L11, "
                      "L2-2, L2-1, L20, L21, L22; 27-vectors are L.reshape(27) (coefficient-major, RGB-minor)",
        "normalisation": "each lighting divided by its DC luminance LUMINANCE @ L[0] (Rec.709 weights "
                         f"{sh.LUMINANCE.tolist()}), so every sample has DC luminance 1",
        "colour": "linear Rec.709 as Cycles renders the spectral Nishita sky, not white-balanced: the mean DC "
                  f"is warm (RGB {np.round(mean[:3], 3).tolist()}) because the sun dominates clear skies",
        "arrays": {"mean": "(27,)", "components": "(27, 27) orthonormal rows, decreasing variance",
                   "variances": "(27,)", "variance_floor": "scalar, regularises the covariance",
                   "heldout_examples": "(4, 9, 3) normalised held-out skies (one heading each)"},
        "commands": [
            ".venv/bin/python " + index["command"],
            f".venv/bin/python datagen/fit_illumination_prior.py --skies {args.skies} --out {args.out} "
            f"--seed {args.seed}",
        ],
        "blender": index["blender"],
        "render": {"seed": index["seed"], "equirect": [index["width"], index["height"]],
                   "samples": index["samples"], "sun_window": index["sun_window"],
                   "render_seconds": index["render_seconds"]},
        "fit_seed": args.seed,
        "counts": {"skies": n_sky, "skies_by_category": cats, "rotations_per_sky": ROTATIONS,
                   "train_skies": int((~heldout).sum()), "heldout_skies": int(heldout.sum()),
                   "train_samples": len(X), "heldout_samples": len(Xt)},
        "sky_parameter_ranges": index["sky_ranges"],
        "sun_rotation_deg": index["sun_rotation_deg"],
        "ground": {"albedo": list(GROUND_ALBEDO), "tint_relative": GROUND_TINT,
                   "model": "Lambertian ground lit by sky + sun replaces the lower hemisphere"},
        "variance_floor": floor,
        "variances": [float(v) for v in variances],
        "explained_variance_cumulative": [round(float(e), 6) for e in explained],
        "heldout_relative_shading_rms_by_k": recon,
        "log_prob": {"train_mean": float(np.mean(lp_train)), "heldout_mean": float(np.mean(lp_test)),
                     "heldout_p05": float(np.quantile(lp_test, 0.05))},
    }
    (args.out / "illumination_prior.json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"{len(X)} train / {len(Xt)} held-out samples from {n_sky} skies {cats}")
    print("explained variance (cumulative):", " ".join(f"{e:.3f}" for e in explained[:10]))
    print("held-out relative shading RMS by k:", recon)
    print(f"log_prob train {np.mean(lp_train):.1f}, held-out {np.mean(lp_test):.1f}")
    print(f"wrote {npz_path} ({npz_path.stat().st_size} bytes) and its card")


if __name__ == "__main__":
    sys.exit(main())
