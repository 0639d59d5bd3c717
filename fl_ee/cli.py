"""``fl-ee``: run (and resume) simulations, report and compare their run directories, list what can be plugged in."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from rich.console import Console

from fl_ee.core.config import Config, load_config, parse_overrides
from fl_ee.core.errors import UserError, printable, shortened

WIDE_COLUMNS = 1000  # `report --wide`: the width tables are laid out for, so that each stays in one piece


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"fl-ee: error: {printable(message)} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fl-ee", description="Federated personalisation of early-exit networks across device tiers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run a simulation")
    run.add_argument("config", nargs="?", help="TOML config file or preset name (default: quickstart)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value by dotted key, e.g. data.alpha=0.1 or tiers.0.depth=2")
    run.add_argument("--out", help="run directory (default: runs/<timestamp>)")
    run.add_argument("--resume", metavar="DIR", help="continue the unfinished run in DIR (as fl-ee resume DIR)")
    run.add_argument("--debug", action="store_true", help="also print the traceback when the run fails")
    run.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard scalars to DIR (fl-ee[tensorboard])")
    resume = sub.add_parser("resume", help="continue an unfinished run from its latest checkpoint")
    resume.add_argument("resume", metavar="DIR", help="the run directory")
    resume.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change a key that changes no result: checkpoint_every, data.root, "
                             "logging.tensorboard, simulation.ray_address, client_gpus, pace or time_scale")
    resume.add_argument("--debug", action="store_true", help="also print the traceback when the run fails")
    resume.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard scalars to DIR")
    check = sub.add_parser("check", help="validate a config, its data, split and strategy; print the plan")
    check.add_argument("config", nargs="?", help="TOML config file or preset name (default: quickstart)")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value by dotted key, as for run")
    report = sub.add_parser("report", help="tables (and plots, HTML) of one run directory, or of a sweep")
    report.add_argument("run_dir", metavar="RUN_DIR|SWEEP_ROOT")
    report.add_argument("--json", action="store_true", help="print summary.json instead of the tables")
    report.add_argument("--plots", action="store_true", help="write PNG plots under RUN_DIR/plots/")
    report.add_argument("--html", action="store_true", help="write a self-contained RUN_DIR/report.html")
    report.add_argument("--wide", action="store_true", help="every column of every table, each table in one piece "
                        "however wide (for a wide terminal, `less -S` or a file)")
    compare = sub.add_parser("compare", help="key metrics of several runs, or of settings over their seeds")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR|SWEEP_ROOT",
                         help="run directories (runs of one config but their seed form a setting) or sweep roots")
    compare.add_argument("--baseline", metavar="NAME", help="the setting the others are tested against (default: "
                         "the first); its name or one of its values, e.g. depthfl")
    compare.add_argument("--json", action="store_true", help="print the settings' statistics and tests as JSON")
    sweep = sub.add_parser("sweep", help="run every combination of --grid values over several seeds")
    sweep.add_argument("config", nargs="?", help="TOML config file or preset name (default: quickstart)")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="a key and the values to sweep; several --grid: every combination")
    seeds = sweep.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, metavar="N", help="run seeds 0..N-1 (default 3)")
    seeds.add_argument("--seed-list", metavar="S1,S2,...", help="run these seeds")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value in every run, as for run")
    sweep.add_argument("--out", help="the sweep root (default: sweeps/<timestamp>); the same command on it again "
                       "runs only what is not finished")
    sweep.add_argument("--jobs", type=int, default=1, metavar="K", help="runs at once (default 1)")
    reproduce = sub.add_parser("reproduce", help="run a published table's recipe; its figures beside the paper's and "
                                                 "a verdict per claim")
    reproduce.add_argument("recipe", help="a shipped recipe (fl-ee list recipes) or a recipe TOML file")
    reproduce.add_argument("--scale", choices=("mini", "full"), default="mini",
                           help="mini: fits a 2-core CPU and says what it gives up; full: the paper's setting "
                                "(default mini)")
    reproduce.add_argument("--seeds", type=int, default=3, metavar="N", help="run seeds 0..N-1 (default 3)")
    reproduce.add_argument("--out", help="the run root (default: reproductions/<recipe>-<scale>); the same command on "
                           "it again runs only what is not finished")
    reproduce.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                           help="a key that changes no result, e.g. data.root=DIR or simulation.client_gpus=0.5")
    reproduce.add_argument("--jobs", type=int, default=1, metavar="K", help="runs at once (default 1)")
    reproduce.add_argument("--json", action="store_true", help="print reproduce.json instead of the tables")
    listing = sub.add_parser("list", help="list strategies, client algorithms, presets or recipes, or the cost of a "
                                          "config's model per exit")
    listing.add_argument("what", choices=("strategies", "algorithms", "presets", "recipes", "model"))
    listing.add_argument("config", nargs="?", help="for model: TOML config file or preset name (default: quickstart)")
    listing.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="for model: override a config value by dotted key, as for run")
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    """``fl-ee run``: preflight, then the simulation with the run directory, checkpoints and a progress bar.

    With ``--resume DIR`` (or as ``fl-ee resume DIR``), the unfinished run in DIR continues.
    """
    resuming: str | None = getattr(args, "resume", None)
    if resuming and (getattr(args, "config", None) or getattr(args, "out", None)):
        raise UserError("--resume continues the run in DIR with the config stored there; drop CONFIG and --out")
    from fl_ee.api import checked_resume, checked_run, execute

    err = Console(stderr=True, soft_wrap=True)
    overrides = parse_overrides(args.overrides)
    if resuming:  # the run directory and its checkpoint are checked before torch is imported
        resume = checked_resume(resuming, overrides)
        cfg, path, done = resume.cfg, resume.run_dir.path, resume.after_round
        err.print(f"resuming {path} after round {done}" if done else f"{path}: no checkpoint; starting over")
    else:
        from fl_ee.results.rundir import default_run_dir

        cfg, path = checked_run(args.config, overrides, args.out), Path(args.out or default_run_dir())
    # Imported only now, so that `fl-ee --help` and bad configs answer without loading torch/Flower.
    from fl_ee.results.report import tier_table
    from sims.engine import Interrupted

    try:
        run = (execute(cfg, run_dir=resume.run_dir, checkpoints=resume.checkpoints, done=resume.after_round,
                       tensorboard=args.tensorboard) if resuming
               else execute(cfg, out=path, tensorboard=args.tensorboard))
    except Interrupted as exc:
        exc.leave()  # its line, then exit 130 at once (Ray's native teardown can take seconds)
    except UserError:
        raise
    except Exception as exc:  # said once the progress bar is gone
        return _stopped(exc, path, args.debug)
    Console().print(tier_table(run.files))
    err.print(f"results in {run.path}")
    return 0


def _stopped(exc: Exception, run_dir: Path, debug: bool) -> int:
    """Say in one line why a run stopped, keep the traceback in ``RUN_DIR/error.log``; the exit code.

    3: training diverged; 1: a strategy fault or any other failure. A run that finished
    no round has been removed by then: there is nothing to keep (``--debug`` shows the
    traceback).
    """
    from fl_ee.core.atomic import atomic_write
    from fl_ee.federation.faults import Diverged
    from fl_ee.results.rundir import ERROR_LOG, ROUNDS
    from sims.stopping import kept_rounds

    cause = exc.__cause__ if isinstance(exc, RuntimeError) and exc.__cause__ else exc
    trace = "".join(traceback.format_exception(cause))
    if debug:
        sys.stderr.write(trace)
    what = str(cause) if isinstance(cause, Diverged) else f"simulation failed: {cause}"
    if (run_dir / ROUNDS).is_file():
        atomic_write(run_dir / ERROR_LOG, f"{cause}\n\n{trace}")
        kept = f"{kept_rounds(run_dir)} finished rounds kept in {run_dir} (traceback in {run_dir / ERROR_LOG})"
        if not isinstance(cause, Diverged):
            kept += f"; `fl-ee resume {run_dir}` continues"
    else:
        kept = "no round finished, nothing kept"
    print(f"fl-ee: error: {printable(what)}; {kept}", file=sys.stderr)
    return 3 if isinstance(cause, Diverged) else 1


def cmd_check(args: argparse.Namespace) -> int:
    """``fl-ee check``: the preflight of ``fl-ee run``, then the plan; starts nothing, writes nothing but caches."""
    cfg = load_config(args.config, parse_overrides(args.overrides))
    from fl_ee.federation.checkrecord import checked_plan
    from fl_ee.federation.plan import plan_renderables
    from sims.backend import check_backend

    check_backend(cfg)
    out = Console()
    for part in plan_renderables(checked_plan(cfg)):
        out.print(part)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``fl-ee report``: the tables of one run directory (or a sweep root), and its plots or HTML page on request."""
    from fl_ee.core.atomic import atomic_write
    from fl_ee.results.groups import is_sweep_root
    from fl_ee.results.report import html_page, report_renderables
    from fl_ee.results.rundir import SUMMARY, load_run

    if is_sweep_root(Path(args.run_dir)):
        return _report_sweep(args)
    run = load_run(args.run_dir)
    err = Console(stderr=True, soft_wrap=True)
    if args.json:
        if run.summary is None:
            raise UserError(f"{run.path} has no {SUMMARY} (the run did not finish); drop --json to see its rounds")
        sys.stdout.write((run.path / SUMMARY).read_text())
    else:
        out = _tables_console(args.wide)
        for part in report_renderables(run, wide=args.wide):
            out.print(part)
    if args.plots or args.html:
        from fl_ee.results.plots import render_plots, write_plots

        images, skipped = render_plots(run)
        for name, why in skipped.items():
            err.print(f"skipped plot {name}: {why}")
        if args.plots:
            err.print(f"plots in {write_plots(run.path, images)}: {', '.join(images) or 'none'}")
        if args.html:
            atomic_write(run.path / "report.html", html_page(run, report_renderables(run, wide=True), images, skipped))
            err.print(f"report in {run.path / 'report.html'}")
    return 0


def _tables_console(wide: bool) -> Console:
    """Where tables are printed: fitted to the terminal, or with ``--wide`` each in one piece however wide."""
    return Console(width=WIDE_COLUMNS) if wide else Console()


def _report_sweep(args: argparse.Namespace) -> int:
    """``fl-ee report SWEEP_ROOT``: the settings compared (against the first), ``sweep.json``, the sweep's plots."""
    from fl_ee.results.groups import SWEEP_JSON, load_settings, settings_table
    from fl_ee.results.plots import render_plots, write_plots
    from fl_ee.results.sweepplots import SWEEP_PLOTS

    if args.html:
        raise UserError("--html reports one run directory; for a sweep use --plots")
    root, settings = Path(args.run_dir), load_settings([args.run_dir])
    if args.json:
        if not (root / SWEEP_JSON).is_file():
            raise UserError(f"{root} has no {SWEEP_JSON}")
        sys.stdout.write((root / SWEEP_JSON).read_text())
    else:
        _tables_console(args.wide).print(settings_table(settings, settings[0]))
    if args.plots:
        err = Console(stderr=True, soft_wrap=True)
        images, skipped = render_plots(settings, SWEEP_PLOTS)
        for name, why in skipped.items():
            err.print(f"skipped plot {name}: {why}")
        err.print(f"plots in {write_plots(root, images)}: {', '.join(images) or 'none'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``fl-ee compare``: runs side by side, or settings (several seeds) with their CIs and tests against a baseline."""
    from fl_ee.results.groups import comparison, find_setting, load_settings, settings_table
    from fl_ee.results.report import compare_table
    from fl_ee.results.rundir import to_json

    settings = load_settings(args.run_dirs)
    runs = [r for s in settings for r in s.runs]
    if len(runs) < 2:
        raise UserError("compare needs at least two finished runs")
    baseline = find_setting(settings, args.baseline) if args.baseline else settings[0]
    if args.json:
        print(to_json(comparison(settings, baseline), indent=2))
    elif all(len(s.runs) == 1 for s in settings) and not args.baseline:
        Console().print(compare_table(runs))
    else:
        Console().print(settings_table(settings, baseline))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """``fl-ee sweep``: see :mod:`fl_ee.studies.sweep`."""
    from fl_ee.studies.sweep import cmd_sweep as sweep
    from fl_ee.studies.sweep import parse_seeds

    return sweep(args.config, args.overrides, args.grid, parse_seeds(args.seeds, args.seed_list), args.out, args.jobs)


def cmd_reproduce(args: argparse.Namespace) -> int:
    """``fl-ee reproduce``: see :mod:`fl_ee.studies.reproduce`."""
    from fl_ee.studies.reproduce import cmd_reproduce as reproduce
    from fl_ee.studies.sweep import parse_seeds

    return reproduce(args.recipe, args.scale, parse_seeds(args.seeds, None), args.out, args.overrides, args.jobs,
                     args.json)


def cmd_list(args: argparse.Namespace) -> int:
    """``fl-ee list``: strategies, client algorithms (plug-ins included), shipped presets or recipes, a model's cost."""
    from importlib import resources

    if args.what == "model":
        print_model(load_config(args.config, parse_overrides(args.overrides)))
    elif args.what == "strategies":
        from strategies.registry import available, strategy_class

        print_plugins(available(), strategy_class)
    elif args.what == "algorithms":
        from fl_ee.learning import algorithm

        print_plugins(algorithm.available(), algorithm.algorithm_class)
    elif args.what == "recipes":
        from fl_ee.studies.recipes import load_recipe, shipped

        for name in shipped():
            recipe = load_recipe(name)[0]
            print(f"{name:18s} {recipe.title}")
            print(f"{'':18s} mini: {recipe.verdict_line('mini')}; full: {recipe.verdict_line('full')}")
    else:
        for entry in sorted(resources.files("sims").joinpath("presets").iterdir(), key=lambda p: p.name):
            if entry.name.endswith(".toml"):
                first = entry.read_text().splitlines()[0].lstrip("# ")
                print(f"{entry.name.removesuffix('.toml'):21s} {first}")
    return 0


def print_plugins(names: dict[str, str], find: Callable[[str], type]) -> None:
    """Each plug-in's name and the first line of its class's docstring (else its ``module:Class`` path)."""
    for name, path in sorted(names.items()):
        doc = (find(name).__doc__ or "").strip().splitlines()
        print(f"{name:12s} {doc[0] if doc else path}")


def print_model(cfg: Config) -> None:
    """Per exit of the config's network on its dataset: FLOPs and parameters of the stage and of the exit head."""
    from rich.table import Table

    from fl_ee.data.datasets import load_dataset
    from fl_ee.federation.preflight import check_model
    from fl_ee.models import build_model, exit_table
    from strategies import network_spec

    check_model(cfg)  # a network too large for this machine, or too narrow for its images: one line
    data = load_dataset(cfg.data)
    model = build_model(network_spec(cfg, data))
    m = cfg.model
    table = Table(title=f"{m.backbone} width {m.width}, {model.spec.norm} norm, {m.exit_head} exit heads, "
                        f"{tuple(data.train_x.shape[1:])} inputs: FLOPs per sample (2 x multiply-accumulates)")
    for header in ("exit", "after block", "stage MFLOPs", "stage params", "head MFLOPs", "head params",
                   "MFLOPs to exit"):
        table.add_column(header, justify="right")
    for i, row in enumerate(exit_table(model), 1):
        table.add_row(str(i), str(row["block"]), f"{row['stage_flops'] / 1e6:.4g}", f"{row['stage_params']:,}",
                      f"{row['head_flops'] / 1e6:.4g}", f"{row['head_params']:,}", f"{row['exit_flops'] / 1e6:.4g}")
    Console().print(table)


PATH_ARGUMENTS = {"config": "CONFIG", "recipe": "RECIPE", "out": "--out", "resume": "DIR", "run_dir": "RUN_DIR",
                  "run_dirs": "RUN_DIR", "tensorboard": "--tensorboard"}  # argument attribute: its name in messages


def check_path_arguments(args: argparse.Namespace) -> None:
    """Refuse, in one line, a path the file system cannot look up: a name too long, a folder it may not search.

    A path that does not exist (yet) passes; each command says what it needs of it.
    """
    for attr, label in PATH_ARGUMENTS.items():
        value = getattr(args, attr, None)
        for text in value if isinstance(value, list) else [value] if value else []:
            try:
                Path(text).stat()
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError as exc:
                raise UserError(f"{shortened(text)}: {exc.strerror}", key=label) from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fl-ee`` console script."""
    args = _parser().parse_args(argv)
    try:
        check_path_arguments(args)
        commands = {"run": cmd_run, "resume": cmd_run, "check": cmd_check, "report": cmd_report,
                    "compare": cmd_compare, "sweep": cmd_sweep, "reproduce": cmd_reproduce, "list": cmd_list}
        return commands[args.command](args)
    except UserError as exc:
        print(f"fl-ee: error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fl-ee: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
