"""From proxy runs' (weights, target loss) to a fit, its held-out rank correlation and a proposal.

Four regressors, each an assumption about how the target loss depends on the shares ``s_i``:

``loglinear``: ridge regression of the loss on the log-shares,
``loss ≈ c + Σ_i b_i · log(max(s_i, 1e-3))``. One coefficient per task is what tens of runs can
pin down, and a loss falling with the log of a domain's share is the diminishing return
scaling-law work reports for data mixtures (the first percent of a related domain helps more than
the tenth). It is monotone in every share, so it suits a search where more of a domain never
hurts within the bounds; where it does, its optimum runs to the edge of the sampled region.

``loglinear_linear``: ``loss ≈ c + Σ_i b_i · log(max(s_i, 1e-3)) + Σ_i a_i · s_i``, ridge on the
standardized features. The log term is the diminishing return, the linear term a cost that grows
with the share — at a fixed token budget the epochs of a dataset grow linearly with its share, and
repeating a small dataset raises the loss — so each task may have an interior optimum: the
U-shape a search over small in-domain sets meets (too little of a task raises its loss, too much
repeats it for epochs). Twice the coefficients of ``loglinear``; use it when a share can be too large.

``quadratic``: ridge on the degree-2 polynomial features of the shares (standardized), the smooth
second-order response surface data-mixing work fits; it also captures interactions between pairs
of tasks, at one coefficient per pair, so it needs a few more runs than ``loglinear_linear``.

``lightgbm``: gradient-boosted trees on the shares, as RegMix does — the better choice with
hundreds of runs, when interactions between domains matter more than smoothness; with few runs
its piecewise-constant fit ranks held-out runs worse (BENCHMARKS.md compares them).

``auto`` (the default) fits ``loglinear``, ``loglinear_linear`` and ``quadratic`` (those installed;
not ``lightgbm``, which needs hundreds of runs) and keeps the one whose k-fold out-of-fold
predictions rank the measured losses best, a tie going to the earlier, simpler one. Ranking is what
the proposal needs, and out-of-fold prediction is the test that a model with more coefficients
cannot pass by fitting noise. Choosing the best of three on the same folds makes the reported ρ
slightly optimistic — the chosen model's ρ is a maximum over candidates, not an independent
estimate; the report lists every candidate's ρ so the margin can be judged.

Fit quality is the Spearman rank correlation between measured losses and k-fold out-of-fold
predictions (each run predicted by a fit that did not see it). The proposal, as RegMix's: predict
many candidate vectors drawn the way the runs were (around the manifest's shares, and around the
first proposal for a refined search), and average the ones with the lowest predictions. Candidates
are kept inside the sampled region — each task's share between the smallest and the largest any
measured run had — because a fit from tens of runs says nothing beyond them: the log-linear fit
keeps falling towards a share of 0 or 1 for as long as it is asked to, and an argmin there is
extrapolation (on the bench corpus it put a target task at 0.1 % and lost to the uniform mixture).
The bounds and the region are boxes, so their intersection is convex and a mean of candidates
inside it stays inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from fm9g.core.errors import Fm9gError
from fm9g.search.space import SearchSpace, draw_weights

REGRESSORS = ("loglinear", "loglinear_linear", "quadratic", "lightgbm")
"""The regressors a fit can use (``auto`` chooses among some of them, so it is not one of them)."""
AUTO = "auto"
AUTO_CANDIDATES = ("loglinear", "loglinear_linear", "quadratic")
"""What ``auto`` chooses among, simplest first (a tie in ρ goes to the earlier)."""
CHOICES = (AUTO, *REGRESSORS)
"""What ``--regressor`` accepts."""
SHARE_FLOOR = 1e-3
"""Shares below this count as this in log-share features (a share of 0 would be -inf)."""
MIN_RUNS = 4
"""The fewest completed runs a fit (and its 2-fold at least cross-validation) needs."""
RIDGE_ALPHAS = np.logspace(-4, 2, 13)
"""The ridge strengths RidgeCV chooses among by leave-one-out."""


def check_available(name: str) -> None:
    """Raise a one-line error, before any run is trained, if the regressor's libraries are missing."""
    if name not in CHOICES:
        raise Fm9gError(f"unknown regressor '{name}'", where="--regressor", fix=f"choose one of {', '.join(CHOICES)}")
    for module, package in (("sklearn", "scikit-learn"), ("scipy", "scipy")) + ((("lightgbm", "lightgbm"),)
                                                                               if name == "lightgbm" else ()):
        try:
            __import__(module)
        except ImportError:
            raise Fm9gError(f"the search's fit needs {package}, which is not installed", where=f"--regressor {name}",
                            fix="pip install 'fm9g[search]'") from None


def make_regressor(name: str, seed: int) -> Any:
    """An unfitted scikit-learn-style regressor over raw shares (features are made inside)."""
    check_available(name)
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, PolynomialFeatures, StandardScaler

    if name == "loglinear":
        return make_pipeline(FunctionTransformer(log_shares), RidgeCV(alphas=RIDGE_ALPHAS))
    if name == "loglinear_linear":
        return make_pipeline(FunctionTransformer(log_and_linear_shares), StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
    if name == "quadratic":
        return make_pipeline(PolynomialFeatures(degree=2, include_bias=False), StandardScaler(),
                             RidgeCV(alphas=RIDGE_ALPHAS))
    if name == "lightgbm":
        from lightgbm import LGBMRegressor

        return LGBMRegressor(n_estimators=300, learning_rate=0.05, num_leaves=7, min_child_samples=2,
                             subsample=1.0, random_state=seed, deterministic=True, n_jobs=1, verbose=-1)
    raise Fm9gError(f"'{name}' chooses among regressors and is not one to fit", where="regression.make_regressor",
                    fix="call regression.choose first and fit the regressor it returns")


def log_shares(weights: np.ndarray) -> np.ndarray:
    """The log-linear model's features: log of each share, floored at :data:`SHARE_FLOOR`."""
    return np.log(np.maximum(weights, SHARE_FLOOR))


def log_and_linear_shares(weights: np.ndarray) -> np.ndarray:
    """``loglinear_linear``'s features: the floored log-shares, then the shares themselves."""
    return np.hstack([log_shares(weights), weights])


def _check(weights: np.ndarray, losses: np.ndarray) -> None:
    if len(losses) < MIN_RUNS:
        raise Fm9gError(f"a fit needs at least {MIN_RUNS} completed runs, the search has {len(losses)}",
                        where="--runs", fix=f"give --runs {MIN_RUNS} or more")


def rank_correlation(name: str, weights: np.ndarray, losses: np.ndarray, *, seed: int,
                     folds: int = 5) -> dict[str, Any]:
    """Spearman's ρ (and its p-value) of out-of-fold predictions against measured losses, k-fold
    with ``min(folds, runs)`` folds (k = runs is leave-one-out)."""
    from scipy.stats import spearmanr
    from sklearn.model_selection import KFold, cross_val_predict

    _check(weights, losses)
    splits = min(folds, len(losses))
    predicted = cross_val_predict(make_regressor(name, seed), weights, losses,
                                  cv=KFold(n_splits=splits, shuffle=True, random_state=seed))
    result = spearmanr(predicted, losses)
    rho = float(result.statistic) if np.isfinite(result.statistic) else 0.0
    return {"regressor": name, "folds": splits, "spearman": rho, "p_value": float(result.pvalue),
            "out_of_fold_predictions": predicted.tolist()}


def choose(name: str, weights: np.ndarray, losses: np.ndarray, *, seed: int, folds: int = 5) -> dict[str, Any]:
    """:func:`rank_correlation` of the regressor to fit (its ``"regressor"``): ``name`` itself, or for
    ``auto`` the one of :data:`AUTO_CANDIDATES` with the highest ρ (ties to the earlier), with every
    candidate's ρ (all on the same folds) under ``"candidates"``."""
    if name != AUTO:
        return rank_correlation(name, weights, losses, seed=seed, folds=folds)
    check_available(AUTO)  # the candidates all need scikit-learn and scipy, nothing else
    qualities = {candidate: rank_correlation(candidate, weights, losses, seed=seed, folds=folds)
                 for candidate in AUTO_CANDIDATES}
    chosen = max(qualities, key=lambda candidate: qualities[candidate]["spearman"])  # max keeps the first of ties
    return {**qualities[chosen], "chosen_by": AUTO,
            "candidates": {candidate: quality["spearman"] for candidate, quality in qualities.items()}}


def fit(name: str, weights: np.ndarray, losses: np.ndarray, *, seed: int) -> Any:
    _check(weights, losses)
    return make_regressor(name, seed).fit(weights, losses)


def sampled_region(space: SearchSpace, sampled: np.ndarray) -> SearchSpace:
    """``space`` with each task's bounds narrowed to the range of its share over the ``sampled`` runs."""
    return replace(space, lower=np.maximum(space.lower, sampled.min(axis=0)),
                   upper=np.minimum(space.upper, sampled.max(axis=0)))


def propose(model: Any, space: SearchSpace, *, sampled: np.ndarray, seed: int, concentration: float,
            centers: Sequence[np.ndarray] = (), center_concentration: float = 20.0, candidates: int = 100_000,
            top: int = 100) -> dict[str, Any]:
    """The mean of the ``top`` candidates with the lowest prediction inside the region ``sampled``
    spans, and its own prediction. Candidates are Dirichlet draws around the manifest's shares (with
    the runs' ``concentration``) and, in equal parts, around each of ``centers`` (with
    ``center_concentration``); the measured runs themselves are candidates too, so the region is
    never empty of them."""
    region = sampled_region(space, sampled)
    parts = 1 + len(centers)
    pools = [draw_weights(space, candidates // parts, seed=seed + 1, concentration=concentration)]
    pools += [draw_weights(space, candidates // parts, seed=seed + 2 + i, concentration=center_concentration,
                           center=np.asarray(center)) for i, center in enumerate(centers)]
    pool = np.concatenate(pools)
    pool = np.concatenate([pool[region.feasible(pool)], sampled])
    predicted = model.predict(pool)
    best = np.argsort(predicted, kind="stable")[:top]
    proposal = pool[best].mean(axis=0)
    proposal = proposal / proposal.sum()
    return {"shares": proposal.tolist(), "predicted": float(model.predict(proposal[None, :])[0]),
            "best_candidate": pool[best[0]].tolist(), "best_candidate_predicted": float(predicted[best[0]]),
            "candidates": len(pool), "averaged": len(best),
            "region": {"lower": region.lower.tolist(), "upper": region.upper.tolist()}}
