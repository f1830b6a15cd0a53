"""The CRF's parameters: one frozen dataclass that is also the ``crf`` section of the config.

``config.py`` declares ``crf: CRFParams``, so a ``crf.*`` key is a field here and the
criterion, the correspondence branch and the test-time refiner receive ``cfg.crf`` as it is.
This module imports nothing (the config layer may import it). docs/method.md §4.3.
"""

from __future__ import annotations

from dataclasses import dataclass

CRF_MODES = ("faithful", "meanfield")


@dataclass(frozen=True)
class CRFParams:
    """Parameters of both CRF modes (docs/method.md §4.3, §5.7).

    ``mode`` is the teacher's CRF (``"none"``: no teacher); the CRF functions take their mode
    as an argument, so that the test-time refiner can run ``test.refine`` with these values.
    ``iters`` counts sweeps in both modes.

    Faithful (the official values): ``kernel_size`` window, kernel ``alpha0``, ``theta0``
    (colour), ``theta1`` (space), initial confidence ``base``, cross-image weight ``gamma``.

    Mean-field (ours): ``mf_kernel_size`` window with ``mf_dilation``, a colour kernel
    (``w_color``, ``theta_color``) plus a spatial one (``w_spatial``, ``theta_spatial``), input
    probabilities clamped to ``[prob_clamp, 1 - prob_clamp]``, the cross-image term added to the
    unary logit with ``cross_weight``, and ``hard``: return ``1[Q_fg > 0.5]`` instead of the
    marginals. Defaults from BENCHMARKS.md "Mean-field tuning".
    """

    mode: str = "faithful"  # the teacher's CRF: "faithful", "meanfield" or "none"
    iters: int = 10
    # faithful: the official MeanField
    kernel_size: int = 3
    alpha0: float = 2.0
    theta0: float = 0.5
    theta1: float = 30.0
    base: float = 0.1
    gamma: float = 0.01  # weight of the cross-image term G (docs/method.md §5.7)
    # meanfield: window, kernels, unary clamp
    mf_kernel_size: int = 7
    mf_dilation: int = 1
    w_color: float = 1.0
    theta_color: float = 0.5
    w_spatial: float = 0.25
    theta_spatial: float = 1.0
    prob_clamp: float = 0.2
    cross_weight: float = 1.0  # weight of G in the unary logit (an extension, not official)
    hard: bool = False  # binarise the marginals at 0.5 (targets like the faithful mode's)


def check_refine_mode(mode: str | None) -> str | None:
    """``mode`` of a test-time refiner (``test.refine``; ``None`` = off), or a ValueError."""
    if mode is not None and mode not in CRF_MODES:
        raise ValueError(f"test.refine: unknown CRF mode {mode!r}; expected 'none' or one of "
                         f"{CRF_MODES}")
    return mode
