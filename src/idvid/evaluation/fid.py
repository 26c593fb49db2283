"""FID on face crops: a proper set-level FID and ConsisID's per-frame variant.

Features: torchvision's ``inception_v3`` architecture with its classifier removed (2048-d pool
features), weights from a local file (torchvision's ``inception_v3_google-0cc3c7bd.pth``, which
is what ``Inception_V3_Weights.DEFAULT`` downloads). Inputs follow the official script: the
ArcFace-aligned face crop resized to 299x299, RGB in [0, 1].

Two numbers, and they are not the same thing:

* ``fid_face`` (proper FID): the mean and covariance of the features of *all* face crops of the
  generated set, against the mean and covariance of the reference set's face crops, put into the
  Fréchet distance ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``. It needs many crops on both
  sides to be meaningful (thousands for published numbers; with few references the covariance is
  low-rank and the value is noisy).
* ``fid_face_per_frame`` (the official script's variant, kept for comparison with the paper): each
  frame's single crop against the single reference crop, averaged over frames. A single sample
  has zero covariance, so each term is just ``|f_ref - f_frame|^2``: a squared feature distance,
  not a distribution distance.

Standard FID tools (pytorch-fid, clean-fid) use TensorFlow-ported Inception weights; numbers from
torchvision's weights are on a different scale and only comparable with each other.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

INCEPTION_WEIGHTS_FILE = "inception_v3_google-0cc3c7bd.pth"
INCEPTION_SIZE = 299

FeatureExtractor = Callable[[np.ndarray], np.ndarray]  # [N, H, W, 3] RGB uint8 -> [N, D] float


class InceptionFeatures:
    """2048-d pool features of torchvision's inception_v3 with weights loaded from ``path``.

    Called on ``[N, H, W, 3]`` RGB uint8 crops, returns ``[N, 2048]`` float64.
    """

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 16):
        from torchvision.models import inception_v3

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights not found: {path}; put torchvision's {INCEPTION_WEIGHTS_FILE} there or set "
                f"models.inception=/path/to/{INCEPTION_WEIGHTS_FILE}"
            )
        # transform_input=True as torchvision does for these weights (they were trained on inputs in [-1, 1]).
        model = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.fc = torch.nn.Identity()
        self.model, self.device, self.batch_size = model.eval().to(device), device, batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        features = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + self.batch_size]))
            batch = batch.permute(0, 3, 1, 2).float().div(255.0).to(self.device)
            batch = F.interpolate(batch, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", antialias=True)
            features.append(self.model(batch).float().cpu())
        return torch.cat(features).numpy().astype(np.float64)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))``, with a small ridge when the product is singular."""
    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products (few samples) are expected; the ridge below handles them
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        ridge = np.eye(sigma1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + ridge) @ (sigma2 + ridge))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows = samples); one sample has zero covariance."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(f"features must be [N >= 1, D], got shape {features.shape}")
    if len(features) == 1:
        return features[0], np.zeros((features.shape[1], features.shape[1]))
    return features.mean(0), np.cov(features, rowvar=False)


def set_fid(reference_features: np.ndarray, generated_features: np.ndarray) -> float:
    """Proper FID between two sets of features (all face crops of each set).

    Equal to ``frechet_distance`` of the sets' means and covariances, computed from the features
    themselves: with centred features A1 [n1, D], A2 [n2, D] the covariances are A^T A / (n - 1), and
    the eigenvalues of S1 S2 are the squared singular values of A1 A2^T / sqrt((n1 - 1)(n2 - 1)), so
    Tr((S1 S2)^(1/2)) is the sum of those singular values. That is exact and needs an n1 x n2 matrix
    instead of the square root of a D x D one (D = 2048, n = a few hundred crops).
    """
    first, second = np.asarray(reference_features, np.float64), np.asarray(generated_features, np.float64)
    if first.ndim != 2 or second.ndim != 2 or first.shape[1] != second.shape[1] or not len(first) or not len(second):
        raise ValueError(f"features must be [N >= 1, D] with the same D, got {first.shape} and {second.shape}")
    diff = first.mean(0) - second.mean(0)
    if len(first) < 2 or len(second) < 2:  # one sample: zero covariance on that side
        return float(diff @ diff + sum(np.trace(statistics(f)[1]) for f in (first, second)))
    centred1, centred2 = first - first.mean(0), second - second.mean(0)
    scale1, scale2 = len(first) - 1, len(second) - 1
    trace1 = float((centred1**2).sum()) / scale1
    trace2 = float((centred2**2).sum()) / scale2
    singular = np.linalg.svd(centred1 @ centred2.T, compute_uv=False)
    return float(diff @ diff + trace1 + trace2 - 2.0 * singular.sum() / np.sqrt(scale1 * scale2))


def per_frame_fid_official(reference_feature: np.ndarray, frame_features: np.ndarray) -> float:
    """ConsisID's per-frame FID averaged over frames: the mean of ``|f_ref - f_frame|^2``.

    Each side is one sample, so both covariances are 0 and the Fréchet distance reduces to the squared
    distance of the features; it is computed that way (a 2048x2048 matrix square root of zeros per frame
    would only cost time).
    """
    reference = np.asarray(reference_feature, dtype=np.float64)
    frames = np.asarray(frame_features, dtype=np.float64)
    return float(np.mean(((frames - reference) ** 2).sum(axis=1)))
