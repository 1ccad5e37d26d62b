"""Posterior of each image's true class under a class-conditional label-noise model.

Noisy datasets such as DS801 are not wrong at random: a given label is either right or, far
more often than chance, the label of a look-alike class (cat/lynx, wolf/coyote, ...). This
module models that with a K x K transition matrix ``T[j, i] = P(given = i | true = j)`` and
returns, for every image, ``P(true = j | image, given label)``:

1. A class-weighted probe trained on the given labels estimates ``P(given | image)`` out of
   sample (:func:`animal_assets.core.cleaning.out_of_sample_probs`).
2. ``T`` is estimated with cleanlab's confident joint; rates below ``min_rate`` are set to
   zero, so an image is only ever moved along a confusion the data shows to be systematic.
3. Undoing the noise, ``P(true | image) ~ P(given | image) T^-1``, and Bayes' rule with the
   given label, ``P(true = j | image, given = i) ~ P(true = j | image) T[j, i]``, give the
   posterior.
4. A few rounds refit the probe on the posterior's labels (a probe trained on cleaner labels
   is a better judge of the image) and recompute the posterior with the same ``T``.
   Re-estimating ``T`` from the posterior in each round was tried and dropped: a rate the
   posterior under-uses shrinks round after round (on imbalanced synthetic clusters one
   direction of a pair collapsed to 0).

On the CIFAR ground-truth benchmark (standard noise: 30 % look-alike flips, 10 % OOD) the
posterior's argmax raised label accuracy from 0.71 (given) to 0.87, where relabelling by
cleanlab's flags and the probe's argmax reached 0.77.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from animal_assets.core.cleaning import out_of_sample_probs

_EPS = 1e-6
PRIOR_IMAGES = 30.0  # shrinkage of the transition estimate toward the identity, see below
MAX_NOISE = 0.45  # largest share of a class's images labelled as other classes


@dataclass(frozen=True)
class NoisePosterior:
    """Result of :func:`noise_posteriors`."""

    posterior: np.ndarray  # (N, K) P(true = j | image, given label), rows sum to 1
    transition: np.ndarray  # (K, K) T[j, i] = P(given = i | true = j)
    moved_per_round: tuple[int, ...]  # images whose argmax differs from the given label


def estimate_transition(labels: np.ndarray, pred_probs: np.ndarray, *, num_classes: int,
                        min_rate: float = 0.08, prior_images: float = PRIOR_IMAGES) -> np.ndarray:
    """Noise transition matrix from out-of-sample probabilities (cleanlab's confident joint).

    Parameters
    ----------
    labels : np.ndarray of int, shape (N,)
        Given labels.
    pred_probs : np.ndarray, shape (N, K)
        Out-of-sample ``P(given | image)``.
    num_classes : int
        K.
    min_rate : float
        Off-diagonal rates below this are set to 0 before the rows are renormalised.
    prior_images : float
        Pseudo-images per class, labelled as their own class, added to the estimate.

    Returns
    -------
    np.ndarray, shape (K, K)
        ``T[j, i] = P(given = i | true = j)``; rows sum to 1.
    """
    from cleanlab.count import compute_confident_joint, estimate_latent

    labels = np.asarray(labels, dtype=np.int64)
    sizes = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if (sizes > 0).all():
        confident_joint = compute_confident_joint(labels, pred_probs)
        _, noise_matrix, _ = estimate_latent(confident_joint, labels)
        transition = np.asarray(noise_matrix, dtype=np.float64).T
    else:
        # cleanlab needs every class among the labels; with one missing, count the probe's
        # argmax against the given labels instead (same orientation, no calibration).
        transition = np.zeros((num_classes, num_classes))
        np.add.at(transition, (pred_probs.argmax(axis=1), labels), 1.0)
        transition /= np.maximum(transition.sum(axis=1, keepdims=True), 1.0)
    # Shrink toward "no noise" by prior_images pseudo-images per class labelled as themselves:
    # negligible for classes of thousands, decisive for classes of a few dozen, whose estimated
    # rates are mostly the probe's own errors.
    counts = transition * sizes[:, None] + prior_images * np.eye(num_classes)
    return sparsify(counts / counts.sum(axis=1, keepdims=True), min_rate=min_rate)


def sparsify(transition: np.ndarray, *, min_rate: float) -> np.ndarray:
    """Zero the off-diagonal rates below ``min_rate``, renormalise, and cap each row's noise.

    A row with no mass (a class nothing was assigned to) becomes the identity row; a row whose
    off-diagonal rates add up to more than ``MAX_NOISE`` is scaled down to it.
    """
    t = np.array(transition, dtype=np.float64)
    k = t.shape[0]
    off = ~np.eye(k, dtype=bool)
    t[off & (t < min_rate)] = 0.0
    empty = t.sum(axis=1) <= 0
    t[empty] = np.eye(k)[empty]
    t = t / t.sum(axis=1, keepdims=True)
    # The model is identifiable only while a class is mostly labelled as itself: cap each row's
    # noise at MAX_NOISE (weak probes on tiny sets otherwise estimate rates above 0.5 and move
    # a whole class into its look-alike).
    noise = 1.0 - np.diag(t)
    scale = np.where(noise > MAX_NOISE, MAX_NOISE / np.maximum(noise, 1e-12), 1.0)
    t = t * np.where(off, scale[:, None], 1.0)
    t[np.diag_indices(k)] = 1.0 - (t * off).sum(axis=1)
    return t


def deconvolve(noisy_probs: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """``P(true | image)`` from ``P(given | image) = P(true | image) @ T``, clipped and renormalised.

    Parameters
    ----------
    noisy_probs : np.ndarray, shape (N, K)
    transition : np.ndarray, shape (K, K)

    Returns
    -------
    np.ndarray, shape (N, K)
    """
    try:
        clean = np.linalg.solve(transition.T, noisy_probs.T).T
    except np.linalg.LinAlgError:
        clean = noisy_probs @ np.linalg.pinv(transition)
    clean = np.clip(clean, _EPS, None)
    return clean / clean.sum(axis=1, keepdims=True)


def bayes_posterior(clean_probs: np.ndarray, labels: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """``P(true = j | image, given = i) ~ P(true = j | image) * T[j, i]``, rows normalised."""
    joint = clean_probs * transition[:, labels].T
    total = joint.sum(axis=1, keepdims=True)
    # A given label no class is ever confused into leaves only the probe's opinion.
    return np.where(total > 0, joint / np.where(total > 0, total, 1.0), clean_probs)


def noise_posteriors(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    train_mask: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    rounds: int = 2,
    min_rate: float = 0.08,
    prior_images: float = PRIOR_IMAGES,
    probe_kwargs: dict | None = None,
) -> NoisePosterior:
    """Posterior of each image's true class (see the module docstring).

    Parameters
    ----------
    features : np.ndarray, shape (N, D)
        Image embeddings.
    labels : np.ndarray of int, shape (N,)
        Given labels.
    num_classes : int
        K.
    train_mask : np.ndarray of bool, shape (N,), optional
        Images the probes learn from and ``T`` is estimated on (e.g. not flagged OOD).
    groups : np.ndarray of int, shape (N,), optional
        Duplicate groups kept within one fold (see :func:`out_of_sample_probs`).
    rounds : int
        Rounds refitting the probe on the posterior's labels (0: none).
    min_rate : float
        See :func:`estimate_transition`.
    prior_images : float
        See :func:`estimate_transition`.
    probe_kwargs : dict, optional
        Passed to :func:`out_of_sample_probs` (``n_folds``, ``seed``, ``c``, ...).

    Returns
    -------
    NoisePosterior
    """
    if rounds < 0:
        raise ValueError(f"noise_model.py: rounds must be >= 0, got {rounds}")
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    mask = np.ones(n, dtype=bool) if train_mask is None else np.asarray(train_mask, dtype=bool)
    kwargs = dict(probe_kwargs or {})

    def probe(targets: np.ndarray) -> np.ndarray:
        return out_of_sample_probs(features, targets, num_classes=num_classes, train_mask=mask,
                                   groups=groups, **kwargs)

    noisy = probe(labels)
    transition = estimate_transition(labels[mask], noisy[mask], num_classes=num_classes,
                                     min_rate=min_rate, prior_images=prior_images)
    posterior = bayes_posterior(deconvolve(noisy, transition), labels, transition)
    moved = [int((posterior[mask].argmax(axis=1) != labels[mask]).sum())]
    for _ in range(rounds):
        clean = probe(np.where(mask, posterior.argmax(axis=1), labels))
        posterior = bayes_posterior(np.clip(clean, _EPS, None), labels, transition)
        moved.append(int((posterior[mask].argmax(axis=1) != labels[mask]).sum()))
    return NoisePosterior(posterior=posterior, transition=transition, moved_per_round=tuple(moved))
