"""The resumable mixture search: draw, train proxies, fit, propose, refine, confirm, report.

A search lives in one directory: ``search.json`` (what defines it: manifest, proxy config, target,
seed, concentration, share bounds, data scaling — a rerun with other settings is refused unless
``--force``), ``runs/run-NNN/`` (one per drawn vector, :mod:`fm9g.search.runs`), ``runs/refine-NNN/``
(``--refine N``), ``confirm/`` (the proposal's own proxy run with ``--confirm``),
``search_report.json``, ``search.png`` and ``mix.proposed.json``.

``--refine N`` trains N more runs drawn around the first fit's proposal and then fits and proposes
again on all of them, so that the final proposal rests on measured mixtures near it rather than on
the first fit's extrapolation. ``--scale-data`` cuts each dataset in every proxy's manifest to its
first rows, proxy tokens / ``--budget-tokens`` of them (``max_rows``): a proxy that never repeats
data ranks a mixture that makes four epochs of a small set at the full size as if it were fresh
data (on the bench corpus that ranking lost to both baselines), while a cut dataset repeats as
often in the proxy as the whole one will in the full run.

Rerunning a killed search trains only the runs without a completion record; since the draws are
a function of the seed and the runs are deterministic, it ends with the result an uninterrupted
search gives. Asking for more ``--runs`` later extends the same sequence of draws. A lock file keeps
two searches out of one directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fm9g.backends.training.config import load_train_config
from fm9g.core.atomic import write_json_atomic
from fm9g.core.errors import Fm9gError
from fm9g.mixer.held_out import find_held_out
from fm9g.mixer.manifest import Manifest, load_manifest
from fm9g.mixer.plan import tokens_per_epoch
from fm9g.mixer.stream import MixtureStream
from fm9g.search import regression
from fm9g.search.runs import ProxyRun, completed, manifest_document
from fm9g.search.space import SearchSpace, build_space, draw_weights, parse_task_values
from fm9g.search.target import Target, parse_target

SHARE_DIGITS = 6
"""Shares are written (and fitted) rounded to 6 decimals: what a run trains on is what is recorded."""
POLL_SECONDS = 0.2
REFINE_SEED_OFFSET = 100
"""The ``--refine`` draws use seed + 100: apart from the runs' generator (seed) and the proposal's
candidate pools (seed + 1, seed + 2, ...)."""


@dataclass(frozen=True)
class SearchOptions:
    manifest: Path
    proxy: Path
    target: str
    runs: int
    output: Path
    seed: int = 0
    concentration: float = 1.0
    min_share: str | None = None
    max_share: str | None = None
    parallel: int = 1
    regressor: str = "auto"
    """A regressor of ``regression.REGRESSORS``, or ``auto``: the one whose out-of-fold ρ is highest."""
    confirm: bool = False
    candidates: int = 100_000
    refine: int = 0
    """Runs drawn around the first proposal before the final fit."""
    refine_concentration: float = 20.0
    budget_tokens: int | None = None
    """The tokens the epoch limits are checked against (default: the proxy's budget)."""
    scale_data: bool = False
    """Proxies train on each dataset's first rows, proxy tokens / ``budget_tokens`` of them."""
    output_manifest: Path | None = None
    plot: Path | None = None
    trust_scripts: bool = False
    force: bool = False


def _digest(document: Any) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Fm9gError("another search is running in this directory", where=str(directory),
                            fix="wait for it, or give --output another directory") from None
        yield


def _rounded(names: list[str], shares: np.ndarray) -> dict[str, float]:
    return {name: round(float(share), SHARE_DIGITS) for name, share in zip(names, shares)}


class Search:
    """One search's settings, space and directory; :meth:`run` does the work and returns the report."""

    def __init__(self, options: SearchOptions, say=print):
        options = replace(options, output=options.output.resolve())
        self.options, self.say = options, say
        if options.runs < regression.MIN_RUNS:
            raise Fm9gError(f"--runs must be at least {regression.MIN_RUNS} (a fit and its cross-validation need "
                            f"them), got {options.runs}", where="--runs")
        regression.check_available(options.regressor)
        if options.budget_tokens is not None and options.budget_tokens < 1:
            raise Fm9gError(f"--budget-tokens must be at least 1, got {options.budget_tokens}", where="--budget-tokens")
        if options.refine < 0:
            raise Fm9gError(f"--refine must be 0 or more, got {options.refine}", where="--refine")
        if options.refine_concentration <= 0:
            raise Fm9gError(f"--refine-concentration must be positive, got {options.refine_concentration:g}",
                            where="--refine-concentration", fix="give e.g. 20 (near the first proposal)")
        if options.parallel < 1:
            raise Fm9gError(f"--parallel must be at least 1, got {options.parallel}", where="--parallel")
        self.manifest: Manifest = load_manifest(options.manifest)
        self.proxy = load_train_config(options.proxy)
        if self.proxy["data"].get("mixture"):
            raise Fm9gError("the proxy config trains a materialized mixture (data.mixture), whose weights are fixed",
                            where=f"{options.proxy}: data.mixture", fix="use data.manifest (or none: --manifest gives it)")
        if options.trust_scripts:
            self.proxy["trust_scripts"] = True  # the proxy runs load the manifest's transform scripts too
        names = self.manifest.task_names
        self.space, rows = self._space(names)
        self.proxy_rows = self._proxy_rows(rows) if options.scale_data else None
        evaluated = [held.spec.task_name for held in find_held_out(self.manifest).sets]
        weights = {spec.task_name: spec.abs_weight for spec in self.manifest.datasets}
        self.target: Target = parse_target(options.target, names, weights, evaluated)
        self.identity = {"manifest": str(Path(options.manifest).resolve()),
                         "manifest_digest": _digest(manifest_document(self.manifest, weights)),
                         "proxy": str(Path(options.proxy).resolve()), "proxy_digest": _digest(self.proxy),
                         "target": options.target, "seed": options.seed, "concentration": options.concentration,
                         "min_share": options.min_share, "max_share": options.max_share,
                         "budget_tokens": options.budget_tokens}
        if options.scale_data:  # only when set: a search.json written before this key existed still matches
            self.identity["scale_data"] = True

    def _proxy_tokens(self) -> int:
        proxy = self.proxy
        return proxy["train_iters"] * proxy["grad_accum"] * proxy["batch_size"] * proxy["max_length"]

    def _space(self, names: list[str]) -> tuple[SearchSpace, list[int]]:
        """The search space, and the rows each dataset trains on."""
        proxy = self.proxy
        packing = self.manifest.with_overrides(max_length=proxy["max_length"], batch_size=proxy["batch_size"],
                                               tokenizer=proxy.get("tokenizer"))
        stream = MixtureStream.from_manifest(packing, trust_scripts=proxy["trust_scripts"])
        try:
            sizes = [tokens_per_epoch(stream, index)["tokens"] for index in range(len(names))]
            rows = [state.nlines for state in stream.progress]
        finally:
            stream.close()
        budget = float(self.options.budget_tokens or self._proxy_tokens())
        space = build_space(self.manifest, sizes, budget,
                            min_shares=parse_task_values(self.options.min_share, names, option="--min-share"),
                            max_shares=parse_task_values(self.options.max_share, names, option="--max-share"))
        return space, rows

    def _proxy_rows(self, rows: list[int]) -> dict[str, int]:
        """``--scale-data``: each dataset cut to its first rows × proxy tokens / budget, so that a share
        makes as many epochs of its (cut) dataset in a proxy as of the whole one at the budget — the
        repetition a full run's mixture brings, which a proxy that never repeats data cannot rank."""
        budget = self.options.budget_tokens
        if budget is None:
            raise Fm9gError("--scale-data needs the full run's size", where="--scale-data",
                            fix="give --budget-tokens N (the full run's train_iters × grad_accum × batch_size × max_length)")
        fraction = self._proxy_tokens() / budget
        if fraction > 1:
            raise Fm9gError(f"--budget-tokens {budget:,} is smaller than the proxy's {self._proxy_tokens():,} tokens, so "
                            "--scale-data would need more rows than the datasets have", where="--scale-data",
                            fix="give the full run's --budget-tokens, or drop --scale-data")
        return {name: max(1, round(count * fraction)) for name, count in zip(self.space.task_names, rows)}

    def _check_directory(self) -> None:
        record = self.options.output / "search.json"
        if record.is_file():
            earlier = json.loads(record.read_text(encoding="utf-8"))
            changed = [key for key in dict.fromkeys([*self.identity, *earlier])
                       if earlier.get(key) != self.identity.get(key)]
            if changed and not self.options.force:
                raise Fm9gError(f"holds a search with other settings ({', '.join(changed)} differ)",
                                where=str(self.options.output),
                                fix="give --output another directory, or --force to discard its runs")
            if changed:
                for name in ("runs", "confirm"):
                    shutil.rmtree(self.options.output / name, ignore_errors=True)
        write_json_atomic(record, self.identity)

    def _train(self, runs: list[ProxyRun]) -> list[dict[str, Any]]:
        """Train ``runs``, ``--parallel`` at a time; the first failure stops the others and is raised."""
        parallel = self.options.parallel
        threads = max(1, (os.cpu_count() or 1) // parallel)
        waiting, running, records = list(runs), [], []

        def score(evaluation: dict[str, Any], where: str) -> float:
            return self.target.value(evaluation, where=where)

        try:
            while waiting or running:
                while waiting and len(running) < parallel:
                    run = waiting.pop(0)
                    run.start(manifest=self.manifest, proxy=self.proxy, threads=threads)
                    running.append(run)
                for run in [run for run in running if run.process.poll() is not None]:
                    running.remove(run)
                    record = run.finish(train_iters=self.proxy["train_iters"], score=score)
                    records.append(record)
                    self.say(f"{run.name}: {self.options.target} {record['target']:.4f} ({record['seconds']:.1f} s)")
                time.sleep(POLL_SECONDS if running else 0)
        finally:
            for run in running:
                run.stop()
        return records

    def _measure(self, prefix: str, draws: np.ndarray) -> tuple[list[dict[str, Any]], list[str], list[str]]:
        """Records of the runs ``PREFIX-NNN`` for ``draws`` (those finished earlier with the same shares
        are kept, the rest trained); also the names kept and the names trained."""
        names, results, pending = self.space.task_names, {}, []
        for index, shares in enumerate(draws):
            name, rounded = f"{prefix}-{index:03d}", _rounded(names, shares)
            record = completed(self.options.output / "runs" / name)
            if record is not None and record["shares"] == rounded:
                results[name] = record
            else:
                pending.append(ProxyRun(self.options.output / "runs" / name, name=name, shares=rounded,
                                        max_rows=self.proxy_rows))
        kept = sorted(results)
        if kept:
            self.say(f"{len(kept)} of {len(draws)} runs finished earlier ({kept[0]} … {kept[-1]}); "
                     f"training {len(pending)}")
        for record in self._train(pending):
            results[record["run"]] = record
        return [results[f"{prefix}-{index:03d}"] for index in range(len(draws))], kept, [run.name for run in pending]

    def run(self) -> dict[str, Any]:
        options = self.options
        with _locked(options.output):
            self._check_directory()
            draws = draw_weights(self.space, options.runs, seed=options.seed, concentration=options.concentration)
            records, kept, trained = self._measure("run", draws)
            report = self._fit(records)
            if options.refine:
                first = report["proposal"]
                center = np.array([first["weights"][name] for name in self.space.task_names])
                around = draw_weights(self.space, options.refine, seed=options.seed + REFINE_SEED_OFFSET,
                                      concentration=options.refine_concentration, center=center)
                refined, refine_kept, refine_trained = self._measure("refine", around)
                records, kept, trained = records + refined, kept + refine_kept, trained + refine_trained
                report = self._fit(records, centers=[center])
                report["first_proposal"] = first
            report["trained"], report["kept"] = trained, kept
            if options.confirm:
                report["confirm"] = self._confirm(report["proposal"])
            write_json_atomic(options.output / "search_report.json", report)
            proposed = options.output_manifest or options.output / "mix.proposed.json"
            write_json_atomic(proposed, manifest_document(self.manifest, report["proposal"]["weights"]))
            report["proposed_manifest"] = str(proposed)
            from fm9g.search.plot import plot_search

            report["plot"] = str(plot_search(report, options.plot or options.output / "search.png"))
            write_json_atomic(options.output / "search_report.json", report)
        return report

    def _fit(self, records: list[dict[str, Any]], centers: tuple[np.ndarray, ...] | list[np.ndarray] = ()
             ) -> dict[str, Any]:
        options, names = self.options, self.space.task_names
        weights = np.array([[record["shares"][name] for name in names] for record in records])
        losses = np.array([record["target"] for record in records])
        quality = regression.choose(options.regressor, weights, losses, seed=options.seed)
        model = regression.fit(quality["regressor"], weights, losses, seed=options.seed)
        proposal = regression.propose(model, self.space, sampled=weights, seed=options.seed,
                                      concentration=options.concentration, centers=centers,
                                      center_concentration=options.refine_concentration,
                                      candidates=options.candidates)
        shares = _rounded(names, np.array(proposal["shares"]))
        baselines = {}
        for label, vector in (("manifest", self.space.base), ("uniform", np.full(len(names), 1 / len(names))),
                              ("natural", self.space.natural)):
            feasible = bool(self.space.feasible(vector)[0])
            baselines[label] = {"weights": _rounded(names, vector), "feasible": feasible,
                                "predicted": float(model.predict(vector[None, :])[0])}
        best = int(np.argmin(losses))
        return {"target": options.target, "tasks": names, "space": self.space.as_json(),
                "settings": {**self.identity, "runs": options.runs, "refine": options.refine,
                             "regressor": options.regressor, "proxy_rows": self.proxy_rows},
                "runs": [{"run": record["run"], "weights": record["shares"], "target": record["target"],
                          "tasks": {task: value.get("loss") for task, value in record["evaluation"]["tasks"].items()},
                          "out_of_fold_predicted": predicted, "seconds": record["seconds"]}
                         for record, predicted in zip(records, quality.pop("out_of_fold_predictions"))],
                "fit": quality, "best_run": {"run": records[best]["run"], "target": float(losses[best])},
                "proposal": {**proposal, "weights": shares}, "baselines": baselines}

    def _confirm(self, proposal: dict[str, Any]) -> dict[str, Any]:
        directory = self.options.output / "confirm"
        record = completed(directory)
        if record is None or record["shares"] != proposal["weights"]:
            self.say("confirm: training the proposed mixture")
            record = self._train([ProxyRun(directory, name="confirm", shares=proposal["weights"],
                                           max_rows=self.proxy_rows)])[0]
        measured = record["target"]
        return {"measured": measured, "predicted": proposal["predicted"], "error": proposal["predicted"] - measured,
                "tasks": {task: value.get("loss") for task, value in record["evaluation"]["tasks"].items()}}
