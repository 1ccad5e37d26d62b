"""Posterior of each image's true class under a class-conditional label-noise model.

Noisy datasets such as DS801 are not wrong at random: a given label is either right or, far
more often than chance, the label of a look-alike class (cat/lynx, wolf/coyote, ...). This
module models that with a K x K transition matrix ``T[j, i] = P(given = i | true = j)`` and
returns, for every image, ``P(true = j | image, given label)``:

1. A class-weighted probe trained on the given labels estimates ``P(given | image)`` out of
   sample (:func:`animal_assets.core.probe.out_of_sample_probs`). Class weighting keeps the
   probe from ignoring small classes, but it answers as if every class were equally common;
   :func:`unweight` puts the given labels' real frequencies back.
2. ``T`` is estimated from the probe's most confident images: row ``j`` holds the given labels
   of the quarter of class ``j``'s images the probe is surest are ``j``
   (:func:`confident_rows`; a class too small for that keeps the row of cleanlab's confident
   joint, see :func:`estimate_transition`). Rates of at least ``min_rate`` are the systematic
   confusions (look-alike pairs) and keep their estimate. The rest are read as
   background noise spread evenly over the other classes, at the rate the images the probe is
   surest of show (:func:`confident_rows`): it is near 0 where no symmetric noise was added,
   so an image moves off its pairs only when the probe is far surer of another class than of
   its given one.
3. Undoing the noise, ``P(true | image) ~ P(given | image) T^-1``, and Bayes' rule with the
   given label, ``P(true = j | image, given = i) ~ P(true = j | image) T[j, i]``, give the
   posterior. The true class prior follows from the given-label shares:
   ``pi = shares T^-1`` (:func:`estimate_prior`).
4. A few rounds refit the probe on the posterior's labels (a probe trained on cleaner labels
   is a better judge of the image) and recompute the posterior. ``T`` stays as estimated from
   the probe of the given labels: a probe fitted on the posterior's labels is surest of the
   images the posterior moved, and a rate the posterior under-uses would shrink round after
   round.
5. :meth:`NoisePosterior.balanced` divides the posterior by the estimated prior. Its argmax
   maximises the mean per-class accuracy: where true classes differ in size, the Bayes argmax
   gives a small class's images to its larger look-alike.

Why the prior is estimated and not assumed: the probe's flat prior suits a set whose true
classes are of equal size (DS801 comes from ANIMAL-10N, 5,000 images per class), and moves
images the wrong way when they are not.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from animal_assets.core.probe import out_of_sample_probs

_EPS = 1e-6
PRIOR_IMAGES = 30.0  # shrinkage of the transition estimate toward the identity, see below
MAX_NOISE = 0.45  # largest share of a class's images labelled as other classes
BACKGROUND_TOP_SHARE = 0.25  # see confident_rows
MIN_ROW_IMAGES = 100  # a class with fewer top images keeps the confident joint's row


@dataclass(frozen=True)
class NoisePosterior:
    """Result of :func:`noise_posteriors`."""

    posterior: np.ndarray  # (N, K) P(true = j | image, given label), rows sum to 1
    transition: np.ndarray  # (K, K) T[j, i] = P(given = i | true = j)
    moved_per_round: tuple[int, ...]  # images whose argmax differs from the given label
    prior: np.ndarray  # (K,) estimated P(true = j) of the images in train_mask
    probe_probs: np.ndarray | None = None  # (N, K) the first probe's P(given = i | image), out of fold

    def balanced(self) -> np.ndarray:
        """The posterior divided by the estimated prior, rows renormalised.

        Its argmax maximises the expected mean per-class accuracy instead of the overall one:
        a small class's images are not given away to a large look-alike just because it is
        large, which the Bayes argmax does.
        """
        weighted = self.posterior / np.maximum(self.prior, _EPS)[None, :]
        return weighted / weighted.sum(axis=1, keepdims=True)


def estimate_prior(given_share: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """True class prior ``pi`` from the given-label shares: ``given_share = pi @ T``.

    Solved by least squares, clipped at a small floor and renormalised.
    """
    pi = np.linalg.lstsq(transition.T, np.asarray(given_share, dtype=np.float64), rcond=None)[0]
    pi = np.clip(pi, 1e-3, None)
    return pi / pi.sum()


def unweight(probs: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Undo a class-balanced probe's prior: ``P(target | image) ~ q(target | image) * share``.

    A probe fitted with ``class_weight="balanced"`` answers as if every class were equally
    common; multiplying by the targets' class shares restores their real frequencies.
    """
    share = np.bincount(targets, minlength=num_classes).astype(np.float64)
    share = np.maximum(share / max(share.sum(), 1.0), _EPS)
    out = np.clip(probs, _EPS, None) * share[None, :]
    return out / out.sum(axis=1, keepdims=True)


def estimate_transition(labels: np.ndarray, pred_probs: np.ndarray, *, num_classes: int,
                        min_rate: float = 0.08, prior_images: float = PRIOR_IMAGES) -> np.ndarray:
    """Noise transition matrix from out-of-sample probabilities.

    Row ``j`` holds the given labels of the images the probe is surest are ``j``
    (:func:`confident_rows`). Those images are almost all truly of class ``j``, so the probe's
    own confusions between two look-alikes blur the rates of their pair less than in cleanlab's
    confident joint, which counts every image above a per-class threshold. The rows use a
    quarter of the images, so they are noisier on small classes, and where a small class's
    given labels are half flipped-in images the probe is surest of some of those too. They
    assume the noise does not depend on the picture; where it does (a lynx that looks like a
    cat is more often labelled cat), they under-count the rates of the look-alike pairs and
    move fewer images. A class whose top share holds fewer than ``MIN_ROW_IMAGES`` images keeps
    its row of the confident joint. The rates below ``min_rate`` are read as background noise
    spread evenly over their row, at the rate the confident rows show (see :func:`sparsify`).

    Parameters
    ----------
    labels : np.ndarray of int, shape (N,)
        Given labels.
    pred_probs : np.ndarray, shape (N, K)
        Out-of-sample ``P(given | image)``.
    num_classes : int
        K.
    min_rate : float
        Off-diagonal rates below this are set to the background rate before the rows are
        renormalised.
    prior_images : float
        Pseudo-images per class, labelled as their own class, added to the estimate.

    Returns
    -------
    np.ndarray, shape (K, K)
        ``T[j, i] = P(given = i | true = j)``; rows sum to 1.
    """
    labels = np.asarray(labels, dtype=np.int64)
    sizes = np.bincount(labels, minlength=num_classes).astype(np.float64)
    # The top share holds a quarter of a class's images: a quarter of the pseudo-images keeps
    # the shrinkage as strong, relative to the evidence, as the confident joint's. A class
    # whose top share is under MIN_ROW_IMAGES keeps its confident-joint row.
    rows = confident_rows(labels, pred_probs, num_classes=num_classes,
                          prior_images=prior_images * BACKGROUND_TOP_SHARE)
    enough = np.round(BACKGROUND_TOP_SHARE * sizes) >= MIN_ROW_IMAGES
    transition = rows
    if not enough.all():
        joint = _confident_joint_rows(labels, pred_probs, sizes, num_classes=num_classes,
                                      prior_images=prior_images)
        transition = np.where(enough[:, None], rows, joint)
    return sparsify(transition, min_rate=min_rate, background=rows)


def _confident_joint_rows(labels: np.ndarray, pred_probs: np.ndarray, sizes: np.ndarray, *,
                          num_classes: int, prior_images: float) -> np.ndarray:
    """``T`` from cleanlab's confident joint, shrunk toward "no noise" by ``prior_images``
    pseudo-images per class labelled as themselves (the rows of the classes too small for
    :func:`confident_rows`)."""
    from cleanlab.count import compute_confident_joint, estimate_latent

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
    # Negligible for classes of thousands, decisive for classes of a few dozen, whose estimated
    # rates are mostly the probe's own errors.
    counts = transition * sizes[:, None] + prior_images * np.eye(num_classes)
    return counts / counts.sum(axis=1, keepdims=True)


def confident_rows(labels: np.ndarray, pred_probs: np.ndarray, *, num_classes: int,
                   top_share: float = BACKGROUND_TOP_SHARE,
                   prior_images: float = PRIOR_IMAGES) -> np.ndarray:
    """Given-label shares among the images a probe is most sure of, class by class.

    Row ``j`` holds the given labels of the ``top_share`` of images (counted against class
    ``j``'s given images) with the highest out-of-sample ``P(j | image)``, shrunk toward the
    identity by ``prior_images`` like :func:`estimate_transition`. These images are almost all
    truly of class ``j``, and noise that does not depend on the picture (symmetric noise) labels
    them as often as any other, so the row estimates its rates with little of the probe's own
    error in it. Noise that does depend on the picture (look-alikes) is under-counted, which is
    why only the rates below ``min_rate`` are read from it.

    A small top share reads the background rate closer to the truth than a large one, with or
    without symmetric noise, and far closer than cleanlab's confident joint, whose threshold
    admits many more images and with them more of the probe's errors.
    """
    labels = np.asarray(labels, dtype=np.int64)
    sizes = np.bincount(labels, minlength=num_classes)
    rows = np.zeros((num_classes, num_classes))
    for j in range(num_classes):
        take = max(1, int(round(top_share * sizes[j])))
        top = np.argsort(-pred_probs[:, j], kind="stable")[:take]
        rows[j] = np.bincount(labels[top], minlength=num_classes)
    rows += prior_images * np.eye(num_classes)
    return rows / rows.sum(axis=1, keepdims=True)


def sparsify(transition: np.ndarray, *, min_rate: float, background: np.ndarray) -> np.ndarray:
    """Even out the off-diagonal rates below ``min_rate``, renormalise, and cap each row's noise.

    The rates below ``min_rate`` are set to the mean of ``background`` (:func:`confident_rows`)
    over the same entries of their row: a class's systematic confusions keep their own rates,
    and what is left is read as noise spread evenly over the other classes (symmetric noise), so
    an image whose probe strongly disagrees with its given label can still move off its
    look-alike pairs. (A rate of zero would make its Bayes factor zero: an image could never
    move to a class that is not a look-alike of its given one.)

    A row with no mass (a class nothing was assigned to) becomes the identity row; a row whose
    off-diagonal rates add up to more than ``MAX_NOISE`` is scaled down to it.
    """
    t = np.array(transition, dtype=np.float64)
    k = t.shape[0]
    off = ~np.eye(k, dtype=bool)
    small = off & (t < min_rate)
    mean = (np.asarray(background) * small).sum(axis=1) / np.maximum(small.sum(axis=1), 1)
    t = np.where(small, mean[:, None], t)
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
        Passed to :func:`out_of_sample_probs` (``n_folds``, ``seed``, ``c``, ...). A
        class-balanced probe's flat prior is undone (:func:`unweight`), so the posterior carries
        the class frequencies the data shows; the true prior is estimated
        (:func:`estimate_prior`).

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
    balanced_probe = kwargs.get("class_weight", "balanced") == "balanced"

    def probe(targets: np.ndarray) -> np.ndarray:
        probs = out_of_sample_probs(features, targets, num_classes=num_classes, train_mask=mask,
                                    groups=groups, **kwargs)
        if balanced_probe:
            probs = unweight(probs, targets[mask], num_classes)
        return probs

    noisy = probe(labels)
    transition = estimate_transition(labels[mask], noisy[mask], num_classes=num_classes,
                                     min_rate=min_rate, prior_images=prior_images)
    posterior = bayes_posterior(deconvolve(noisy, transition), labels, transition)
    moved = [int((posterior[mask].argmax(axis=1) != labels[mask]).sum())]
    for _ in range(rounds):
        clean = probe(np.where(mask, posterior.argmax(axis=1), labels))
        posterior = bayes_posterior(np.clip(clean, _EPS, None), labels, transition)
        moved.append(int((posterior[mask].argmax(axis=1) != labels[mask]).sum()))
    share = np.bincount(labels[mask], minlength=num_classes) / max(int(mask.sum()), 1)
    prior = estimate_prior(share, transition)
    return NoisePosterior(posterior=posterior, transition=transition, moved_per_round=tuple(moved),
                          prior=prior, probe_probs=noisy)
