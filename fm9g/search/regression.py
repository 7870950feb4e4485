"""From proxy runs' (weights, target loss) to a fit, its held-out rank correlation and a proposal.

Two regressors:

``loglinear`` (the default): ridge regression of the loss on the log-shares,
``loss ≈ c + Σ_i b_i · log(max(share_i, 1e-3))``, its ridge strength chosen by leave-one-out
(scikit-learn's ``RidgeCV``). A search trains tens of proxies, not RegMix's 512: a fit with one
coefficient per task is what so few runs can pin down, and a loss that falls with the log of a
domain's share is the shape scaling-law work reports for data mixtures (diminishing returns: the
first percent of a related domain helps more than the tenth). Its prediction is smooth, so the
proposal is not an artifact of one tree split.

``lightgbm``: gradient-boosted trees on the shares, as RegMix does — the better choice with
hundreds of runs, when interactions between domains matter more than smoothness; with few runs
its piecewise-constant fit ranks held-out runs worse (BENCHMARKS.md compares the two).

Fit quality is the Spearman rank correlation between measured losses and k-fold out-of-fold
predictions (each run predicted by a fit that did not see it): the proposal only needs the fit to
*order* mixtures correctly. The proposal, as RegMix's: predict many candidate vectors drawn the way
the runs were (around the manifest's shares, and around the first proposal for a refined search),
and average the ones with the lowest predictions. Candidates are kept inside the sampled region —
each task's share between the smallest and the largest any measured run had — because a fit from
tens of runs says nothing beyond them: the log-linear fit keeps falling towards a share of 0 or 1
for as long as it is asked to, and an argmin there is extrapolation (on the bench corpus it put a
target task at 0.1 % and lost to the uniform mixture). The bounds and the region are boxes, so
their intersection is convex and a mean of candidates inside it stays inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from fm9g.core.errors import Fm9gError
from fm9g.search.space import SearchSpace, draw_weights

REGRESSORS = ("loglinear", "lightgbm")
SHARE_FLOOR = 1e-3
"""Shares below this count as this in log-share features (a share of 0 would be -inf)."""
MIN_RUNS = 4
"""The fewest completed runs a fit (and its 2-fold at least cross-validation) needs."""


def check_available(name: str) -> None:
    """Raise a one-line error, before any run is trained, if the regressor's libraries are missing."""
    if name not in REGRESSORS:
        raise Fm9gError(f"unknown regressor '{name}'", where="--regressor", fix=f"choose one of {', '.join(REGRESSORS)}")
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
    from sklearn.preprocessing import FunctionTransformer

    if name == "loglinear":
        return make_pipeline(FunctionTransformer(log_shares), RidgeCV(alphas=np.logspace(-4, 2, 13)))
    if name == "lightgbm":
        from lightgbm import LGBMRegressor

        return LGBMRegressor(n_estimators=300, learning_rate=0.05, num_leaves=7, min_child_samples=2,
                             subsample=1.0, random_state=seed, deterministic=True, n_jobs=1, verbose=-1)


def log_shares(weights: np.ndarray) -> np.ndarray:
    """The log-linear model's features: log of each share, floored at :data:`SHARE_FLOOR`."""
    return np.log(np.maximum(weights, SHARE_FLOOR))


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
