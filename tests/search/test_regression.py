"""The fit ranks held-out mixtures and the proposal finds the known optimum within the bounds.

A synthetic loss with a known minimum: ``L(s) = 3 - 0.3·log s₁ - 0.1·log s₂ - 0.05·log s₃`` plus
noise; its minimum on the simplex is at s ∝ (0.3, 0.1, 0.05). And a U-shaped one, the same plus
``2·s₁`` (a cost growing with the first task's share, as repeating a small dataset does): its
minimum is interior in s₁, where no loss linear in the log-shares can put it.
"""

from __future__ import annotations

import numpy as np
import pytest

from fm9g.core.errors import Fm9gError
from fm9g.search import regression
from fm9g.search.space import SearchSpace, draw_weights

COEFFICIENTS = np.array([0.3, 0.1, 0.05])
OPTIMUM = COEFFICIENTS / COEFFICIENTS.sum()


def synthetic_space(upper=(1.0, 1.0, 1.0)) -> SearchSpace:
    base = np.full(3, 1 / 3)
    return SearchSpace(["a", "b", "c"], base, np.zeros(3), np.array(upper), base, 1.0, np.ones(3), ["none"] * 3)


COSTS = np.array([2.0, 0.0, 0.0])


def synthetic_loss(weights: np.ndarray, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 3 - np.log(weights) @ COEFFICIENTS + noise * rng.standard_normal(len(weights))


def u_shaped_loss(weights: np.ndarray, noise: float, seed: int = 0) -> np.ndarray:
    return synthetic_loss(weights, noise, seed) + weights @ COSTS


def u_shaped_optimum() -> np.ndarray:
    """argmin of ``-Σ b_i log s_i + Σ a_i s_i`` on the simplex: s_i = b_i / (a_i + λ), λ making Σ s_i = 1."""
    from scipy.optimize import brentq

    multiplier = brentq(lambda value: (COEFFICIENTS / (COSTS + value)).sum() - 1, 1e-9, 10.0)
    return COEFFICIENTS / (COSTS + multiplier)


@pytest.mark.parametrize("name", regression.REGRESSORS)
def test_the_fit_ranks_held_out_runs(name):
    few = name in ("loglinear", "loglinear_linear")
    space = synthetic_space()
    weights = draw_weights(space, 24 if few else 64, seed=0, concentration=1.0)
    quality = regression.rank_correlation(name, weights, synthetic_loss(weights, 0.01), seed=0)
    assert quality["spearman"] > (0.9 if few else 0.6), quality["spearman"]
    assert quality["folds"] == 5 and len(quality["out_of_fold_predictions"]) == len(weights)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_and_linear_terms_find_an_interior_optimum_the_log_linear_fit_misses(seed):
    """With ``2·s₁`` added the optimum moves from s₁ = 0.67 to 0.14 (the U-shape); the log-linear fit,
    monotone in each share, misses it by more than 0.09 in some share, the log-and-linear fit is within 0.03."""
    optimum = u_shaped_optimum()
    assert optimum == pytest.approx([0.138, 0.575, 0.287], abs=1e-3)
    space = synthetic_space()
    weights = draw_weights(space, 24, seed=seed, concentration=1.0)
    losses = u_shaped_loss(weights, 0.005, seed)
    errors = {}
    for name in ("loglinear", "loglinear_linear"):
        model = regression.fit(name, weights, losses, seed=0)
        proposal = regression.propose(model, space, sampled=weights, seed=0, concentration=1.0, candidates=20_000)
        errors[name] = np.abs(np.array(proposal["shares"]) - optimum).max()
    assert errors["loglinear_linear"] < 0.03 and errors["loglinear"] > 0.09, errors


def test_auto_keeps_the_candidate_that_ranks_held_out_runs_best():
    """On the U-shaped loss auto leaves loglinear for a model with a cost term; on the log-linear loss
    it keeps loglinear (the quadratic ranks worst there); the report lists every candidate's ρ."""
    space = synthetic_space()
    weights = draw_weights(space, 24, seed=0, concentration=1.0)
    u_shaped = regression.choose("auto", weights, u_shaped_loss(weights, 0.005), seed=0)
    assert set(u_shaped["candidates"]) == set(regression.AUTO_CANDIDATES)
    assert u_shaped["regressor"] == "loglinear_linear" and u_shaped["chosen_by"] == "auto"
    assert u_shaped["spearman"] == max(u_shaped["candidates"].values()) > u_shaped["candidates"]["loglinear"] + 0.2

    weights = draw_weights(space, 16, seed=0, concentration=1.0)
    log_linear = regression.choose("auto", weights, synthetic_loss(weights, 0.005), seed=0)
    candidates = log_linear["candidates"]
    assert log_linear["regressor"] == "loglinear", candidates
    assert candidates["loglinear"] > candidates["loglinear_linear"] > candidates["quadratic"], candidates


def test_auto_breaks_a_tie_for_the_simpler_model():
    """Noise-free log-linear losses: loglinear_linear (which contains loglinear) ranks them perfectly
    too, and auto keeps the simpler loglinear."""
    weights = draw_weights(synthetic_space(), 24, seed=2, concentration=1.0)
    chosen = regression.choose("auto", weights, synthetic_loss(weights, 0.0), seed=0)
    candidates = chosen["candidates"]
    assert candidates["loglinear"] == candidates["loglinear_linear"] == pytest.approx(1.0), candidates
    assert chosen["regressor"] == "loglinear"


def test_a_named_regressor_is_used_as_given():
    weights = draw_weights(synthetic_space(), 16, seed=0, concentration=1.0)
    quality = regression.choose("quadratic", weights, synthetic_loss(weights, 0.005), seed=0)
    assert quality["regressor"] == "quadratic" and "candidates" not in quality


def test_shuffled_losses_rank_nothing():
    """The correlation is out of fold: a fit to noise does not rank unseen runs."""
    space = synthetic_space()
    weights = draw_weights(space, 24, seed=0, concentration=1.0)
    losses = np.random.default_rng(5).permutation(synthetic_loss(weights, 0.0))
    assert regression.rank_correlation("loglinear", weights, losses, seed=0)["spearman"] < 0.5


def test_the_proposal_is_the_optimum_and_respects_the_bounds():
    space = synthetic_space()
    weights = draw_weights(space, 16, seed=0, concentration=1.0)
    model = regression.fit("loglinear", weights, synthetic_loss(weights, 0.005), seed=0)
    proposal = regression.propose(model, space, sampled=weights, seed=0, concentration=1.0, candidates=20_000)
    assert np.abs(np.array(proposal["shares"]) - OPTIMUM).max() < 0.05, proposal["shares"]

    bounded = synthetic_space(upper=(0.5, 1.0, 1.0))  # the optimum's a = 0.67 is out of bounds: a ≤ 0.5 binds
    proposal = regression.propose(model, bounded, sampled=weights, seed=0, concentration=1.0, candidates=20_000)
    shares = np.array(proposal["shares"])
    assert shares[0] <= 0.5 + 1e-9 and shares[0] > 0.45, shares
    assert shares[1] > shares[2]
    assert proposal["predicted"] == pytest.approx(float(model.predict(shares[None, :])[0]))


def test_the_proposal_stays_inside_the_region_the_runs_sampled():
    """Runs that never gave task a more than 0.3 cannot say what a = 0.67 (the true optimum) does: the
    proposal goes to the edge of what was measured (a ≈ 0.3), not beyond; a refined search's runs
    near the first proposal let a later proposal move on, up to the new edge."""
    space = synthetic_space()
    weights = draw_weights(space, 400, seed=0, concentration=1.0)
    weights = weights[weights[:, 0] <= 0.3][:16]
    model = regression.fit("loglinear", weights, synthetic_loss(weights, 0.005), seed=0)
    proposal = regression.propose(model, space, sampled=weights, seed=0, concentration=1.0, candidates=20_000)
    edge = weights[:, 0].max()
    assert proposal["region"]["upper"][0] == pytest.approx(edge)
    assert edge - 0.06 < proposal["shares"][0] <= edge + 1e-9, (proposal["shares"], edge)

    first = np.array(proposal["shares"])
    nearby = draw_weights(space, 8, seed=7, concentration=20.0, center=first)
    assert nearby[:, 0].max() > edge  # the refinement samples past the old edge
    sampled = np.concatenate([weights, nearby])
    refit = regression.fit("loglinear", sampled, synthetic_loss(sampled, 0.005), seed=0)
    moved = regression.propose(refit, space, sampled=sampled, seed=0, concentration=1.0, centers=[first],
                               candidates=20_000)
    assert edge < moved["shares"][0] <= sampled[:, 0].max() + 1e-9, moved["shares"]


def test_too_few_runs_and_unknown_regressors_are_refused():
    weights = draw_weights(synthetic_space(), 3, seed=0, concentration=1.0)
    with pytest.raises(Fm9gError, match="needs at least 4 completed runs"):
        regression.fit("loglinear", weights, synthetic_loss(weights, 0), seed=0)
    with pytest.raises(Fm9gError, match="unknown regressor 'tree'"):
        regression.check_available("tree")
    regression.check_available("auto")
    with pytest.raises(Fm9gError, match="chooses among regressors"):
        regression.make_regressor("auto", seed=0)
