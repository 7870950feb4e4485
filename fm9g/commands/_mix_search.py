"""``fm9g mix search``: learn the mixture's weights from proxy runs (RegMix).

A mode of ``fm9g mix`` (``fm9g mix`` adds it as its ``search`` sub-command; this module is private,
so the command discovery does not list it as a command of its own). Draws ``--runs`` weight vectors
around the manifest's, trains a proxy model on each with the ``--proxy`` train config, evaluates
each on ``--target``, fits a regression from weights to the target and proposes the weights with
the lowest prediction; writes the report, a plot and the proposed manifest into ``--output``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "learn the weights: train proxy models on drawn mixtures, fit weights → target loss, propose the best"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="the mix manifest whose weights to search")
    parser.add_argument("--proxy", required=True, metavar="TRAIN_CONFIG",
                        help="the proxy train config (small preset, few steps); its data.manifest is replaced")
    parser.add_argument("--target", required=True,
                        help="what to minimize: a task's held-out loss (TASK), loss (token-weighted), weighted_loss "
                             "(by the manifest's weights) or a weighted sum of tasks' (chat:0.7,book:0.3)")
    parser.add_argument("--runs", type=int, required=True, metavar="K", help="how many proxy runs (mixtures) to train")
    parser.add_argument("--output", default="search", metavar="DIR",
                        help="the search directory (runs, report, plot, proposed manifest); a rerun resumes it "
                             "(default: ./search)")
    parser.add_argument("--parallel", type=int, default=1, metavar="P", help="train P proxy runs at a time")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weight draws and the fit (default 0)")
    parser.add_argument("--concentration", type=float, default=1.0, metavar="C",
                        help="draws are Dirichlet(C × tasks × manifest shares): 1 spreads widely (uniform over the "
                             "simplex for equal weights), larger stays near the manifest's (default 1)")
    parser.add_argument("--min-share", metavar="TASK:SHARE,...", help="least share of tasks, e.g. chat:0.1")
    parser.add_argument("--max-share", metavar="TASK:SHARE,...", help="largest share of tasks, e.g. book:0.5")
    parser.add_argument("--regressor", default="auto",  # checked by the search (regression.CHOICES), in one line
                        help="the fit: ridge on log-shares (loglinear), on log-shares and shares (loglinear_linear: "
                             "a share can be too large), on degree-2 polynomials of the shares (quadratic), or "
                             "LightGBM (RegMix's; suits hundreds of runs); auto (default) keeps whichever of the "
                             "three ridges ranks held-out runs best")
    parser.add_argument("--candidates", type=int, default=100_000, metavar="N",
                        help="candidate mixtures the fit scores to find the proposal (default 100,000)")
    parser.add_argument("--refine", type=int, default=0, metavar="N",
                        help="after the K runs, train N more drawn around the first proposal, then fit and propose "
                             "again on all K+N (default 0)")
    parser.add_argument("--refine-concentration", type=float, default=20.0, metavar="C",
                        help="how close the --refine runs stay to the first proposal: Dirichlet(C × tasks × "
                             "proposal) (default 20)")
    parser.add_argument("--budget-tokens", type=int, metavar="N",
                        help="check max_epochs/allow_repeat against N tokens (the full run's) instead of the proxy's "
                             "train_iters × grad_accum × batch_size × max_length")
    parser.add_argument("--scale-data", action="store_true",
                        help="with --budget-tokens: proxies train on each dataset's first rows, proxy tokens / budget "
                             "of them, so a mixture repeats its data in a proxy as often as in the full run")
    parser.add_argument("--confirm", action="store_true",
                        help="train one more proxy on the proposal: predicted vs measured loss in the report")
    parser.add_argument("--output-manifest", metavar="FILE", help="the proposed manifest (default DIR/mix.proposed.json)")
    parser.add_argument("--plot", metavar="FILE.png", help="the figure (default DIR/search.png)")
    parser.add_argument("--trust-scripts", action="store_true",
                        help="allow seed transform scripts named by path in the manifest (runs their code)")
    parser.add_argument("--force", action="store_true",
                        help="DIR holds a search with other settings: discard its runs and start over")


def _print_report(report: dict, console) -> None:
    from rich.table import Table

    tasks = report["tasks"]
    table = Table(title=f"proxy runs — target {report['target']}")
    for column in ("run", *tasks, "measured", "predicted (out of fold)"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for run in sorted(report["runs"], key=lambda run: run["target"]):
        table.add_row(run["run"], *(f"{run['weights'][task]:.3f}" for task in tasks), f"{run['target']:.4f}",
                      f"{run['out_of_fold_predicted']:.4f}")
    console.print(table)
    fit, proposal = report["fit"], report["proposal"]
    console.print(f"fit: {fit['regressor']}, Spearman ρ {fit['spearman']:.3f} on held-out runs ({fit['folds']}-fold, "
                  f"p {fit['p_value']:.2g})")
    if fit.get("candidates"):
        console.print(f"  chosen by {fit['chosen_by']} for the highest ρ of "
                      + ", ".join(f"{name} {rho:.3f}" for name, rho in fit["candidates"].items()))
    console.print("proposal: " + ", ".join(f"{task} {proposal['weights'][task]:.3f}" for task in tasks)
                  + f" — predicted {proposal['predicted']:.4f} (best run {report['best_run']['run']}: "
                    f"{report['best_run']['target']:.4f})")
    if report.get("first_proposal"):
        first = report["first_proposal"]
        console.print("  before --refine: " + ", ".join(f"{task} {first['weights'][task]:.3f}" for task in tasks)
                      + f" — predicted {first['predicted']:.4f}")
    for label, baseline in report["baselines"].items():
        note = "" if baseline["feasible"] else " (outside the bounds)"
        console.print(f"  {label}: predicted {baseline['predicted']:.4f}{note}")
    if report.get("confirm"):
        confirm = report["confirm"]
        console.print(f"confirmed: measured {confirm['measured']:.4f}, predicted {confirm['predicted']:.4f} "
                      f"(error {confirm['error']:+.4f})")


def run(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console

    from fm9g.search.search import Search, SearchOptions

    console = Console(highlight=False, stderr=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)
    options = SearchOptions(
        manifest=Path(args.manifest), proxy=Path(args.proxy), target=args.target, runs=args.runs,
        output=Path(args.output), seed=args.seed, concentration=args.concentration, min_share=args.min_share,
        max_share=args.max_share, parallel=args.parallel, regressor=args.regressor, confirm=args.confirm,
        candidates=args.candidates, budget_tokens=args.budget_tokens, refine=args.refine,
        refine_concentration=args.refine_concentration, scale_data=args.scale_data,
        output_manifest=Path(args.output_manifest) if args.output_manifest else None,
        plot=Path(args.plot) if args.plot else None, trust_scripts=args.trust_scripts, force=args.force)

    def say(line: str) -> None:
        print(f"fm9g mix search: {line}", file=sys.stderr, flush=True)

    search = Search(options, say=say)
    say(f"{args.runs} proxy runs of {args.proxy} over {len(search.space.task_names)} tasks; target {args.target}; "
        f"epoch limits over {search.space.budget_tokens:,.0f} tokens; output {args.output}")
    report = search.run()
    _print_report(report, console)
    console.print(f"report: {Path(args.output) / 'search_report.json'}; plot: {report['plot']}; "
                  f"proposed manifest: {report['proposed_manifest']}")
    return 0
