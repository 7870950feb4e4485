"""``fm9g mix search``: learn a mixture's weights from proxy runs (RegMix, Liu et al., 2024).

Above the backends in the pipeline: it drives real ``fm9g train`` processes (one per drawn weight
vector), reads their held-out evaluations, fits a regression from weights to the target loss and
proposes the weights with the lowest prediction within the constraints.

- :mod:`fm9g.search.space`: the feasible shares (min/max shares, epochs a proxy budget allows) and
  the seeded Dirichlet draws around the manifest's weights;
- :mod:`fm9g.search.target`: what is minimized (a task's held-out loss, ``loss``, ``weighted_loss``
  or a weighted sum of tasks');
- :mod:`fm9g.search.runs`: one proxy run's directory, its training process and completion record;
- :mod:`fm9g.search.regression`: the fit, its cross-validated rank correlation and the proposal;
- :mod:`fm9g.search.search`: the resumable search, its report, plot and proposed manifest.
"""
