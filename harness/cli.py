"""The `harness` command: run scenarios, render reports, list stored runs.

User errors (HarnessError) become one line on stderr and exit code 2, here and only here.
`harness run` exits 1 when a variant failed or a budget was missed.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.budgets import Verdict, evaluate, variant_of
from harness.errors import HarnessError
from harness.orchestrator import resolve_targets, run_scenario, total_steps
from harness.report import write_html
from harness.results import build_results, write_json
from harness.scenario import load_scenario
from harness.store import DEFAULT_DB, Store
from harness.targets import TargetInfo

def _wide(stderr: bool) -> Console:
    """A console at least 120 columns wide, so piped output is not cut to 80."""
    return Console(stderr=stderr, width=max(Console(stderr=stderr).width, 120))


console = _wide(stderr=True)

# (metric, column heading) of the summary table printed after a run
SUMMARY_METRICS = (("ttft_ms", "TTFT ms"), ("decode_tokens_per_s", "decode tok/s"), ("e2e_ms", "e2e ms"),
                   ("peak_rss_bytes", "peak RSS"), ("weights_bytes", "weights"),
                   ("agreement_with_baseline", "agree"), ("exact_match", "exact"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a scenario and store its measurements")
    run.add_argument("scenario", type=Path)
    run.add_argument("--target", action="append", help="target to run on (repeatable); default: the scenario's")
    run.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"results store (default {DEFAULT_DB})")
    run.add_argument("--json", type=Path, help="write the results document here")
    run.add_argument("--report", type=Path, help="write the HTML report here (default reports/<scenario>.html)")

    report = commands.add_parser("report", help="render the HTML report of a stored run")
    report.add_argument("run_id", nargs="?", help="run id (default: the latest run)")
    report.add_argument("--db", type=Path, default=DEFAULT_DB)
    report.add_argument("--out", type=Path, help="HTML file (default reports/<scenario>.html)")
    report.add_argument("--json", type=Path, help="also write the results document here")

    listing = commands.add_parser("list", help="list the runs in the store")
    listing.add_argument("--db", type=Path, default=DEFAULT_DB)

    emulator = commands.add_parser("aihub-emulator", help="a loopback Qualcomm AI Hub for tests and demos")
    emulator_commands = emulator.add_subparsers(dest="emulator_command", required=True)
    serve = emulator_commands.add_parser("serve", help="serve it and write the qai-hub profile 'emulator' for it")
    serve.add_argument("--port", type=int, default=8765)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    targets = resolve_targets(scenario, args.target)
    store = Store(args.db)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task(scenario.name, total=total_steps(scenario, len(targets)))
        run_id = run_scenario(scenario, targets, store,
                              on_step=lambda what: progress.update(task, advance=1, description=what))
    document = build_results(store, run_id)
    verdicts = evaluate(document)
    _print_summary(document, verdicts)
    _write_outputs(document, verdicts, args.json, args.report)
    ok = all(r["status"] == "ok" for r in document["results"]) and all(v.passed for v in verdicts)
    return 0 if ok else 1


def cmd_report(args: argparse.Namespace) -> int:
    store = _existing_store(args.db)
    document = build_results(store, args.run_id)
    _write_outputs(document, evaluate(document), args.json, args.out)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = _existing_store(args.db)
    table = Table("scenario", "started", "status", "commit")
    table.add_column("run id", no_wrap=True)
    for run in store.runs():
        started = datetime.fromtimestamp(run.started_at).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(run.scenario, started, run.status, (run.git_commit or "")[:12], run.run_id)
    _wide(stderr=False).print(table)
    return 0


def _existing_store(path: Path) -> Store:
    if not path.is_file():
        raise HarnessError(f"{path}: --db: no results store there; run a scenario first")
    return Store(path)


def _write_outputs(document: dict, verdicts: list[Verdict], json_path: Path | None, html_path: Path | None) -> None:
    html_path = html_path or Path("reports") / f"{document['scenario']['name']}.html"
    write_html(document, html_path, verdicts)
    console.print(f"report: {html_path}")
    if json_path:
        write_json(document, json_path)
        console.print(f"results: {json_path}")


def _print_summary(document: dict, verdicts: list[Verdict]) -> None:
    table = Table(title=f"{document['scenario']['name']} · run {document['run_id']} (medians)")
    table.add_column("variant")
    table.add_column("target")
    for _, heading in SUMMARY_METRICS:
        table.add_column(heading, justify="right")
    table.add_column("status")
    for result in document["results"]:
        target = result["target"]
        label = TargetInfo(**target).key + (" (emulated)" if target["emulated"] else "")
        cells = [_cell(result["metrics"].get(name)) for name, _ in SUMMARY_METRICS]
        table.add_row(variant_of(result).key, label, *cells, result["status"])
    console.print(table)
    for verdict in verdicts:
        style = "green" if verdict.passed else "bold red"
        console.print(f"budget: {verdict.text}", style=style, markup=False, highlight=False)


def _cell(metric: dict | None) -> str:
    if metric is None:
        return "-"
    value = metric["median"]
    if metric["unit"] == "bytes":
        return f"{value / 2**20:,.0f} MiB"
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def cmd_aihub_emulator(args: argparse.Namespace) -> int:
    from harness.aihub.emulator import serve

    serve(args.port, Path("~/.qai_hub/emulator.ini").expanduser())
    return 0


COMMANDS = {"run": cmd_run, "report": cmd_report, "list": cmd_list, "aihub-emulator": cmd_aihub_emulator}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("harness: interrupted; samples measured so far are in the store", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
