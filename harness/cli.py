"""The `harness` command: run scenarios, render reports, compare runs, list stored runs and adb devices.

User errors (HarnessError) become one line on stderr and exit code 2, here and only here.
`harness run` exits 1 when a variant failed or a budget failed, 3 when no budget failed but
one was inconclusive (`run_exit_code`); `harness compare` exits 1 on a regression.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
from datetime import datetime
from itertools import groupby
from pathlib import Path

from adbutils import AdbError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from harness.analysis.budgets import Verdict, evaluate, variant_of
from harness.analysis.compare import Change, aa_noise, compare, last_good, regressions
from harness.emulators.adb import PROFILES, AdbServer
from harness.emulators.adb.confine import ConfinementError
from harness.emulators.adb.control import inject
from harness.emulators.adb.device import FAULTS
from harness.errors import HarnessError
from harness.output.exports import FORMATS, SUFFIX, export
from harness.output.format import fmt
from harness.analysis.history import history, seconds_per_process
from harness.measure.metrics import METRICS
from harness.run.orchestrator import (kept, resolve_targets, resumable, resume_run, run_scenario, runner_processes,
                                     steps_per_process, total_steps)
from harness.output.report import write_html
from harness.output.report.html import TREND_METRICS
from harness.output.report.markdown import markdown_summary
from harness.analysis.results import build_results, write_json
from harness.spec.checks import check_output, check_store
from harness.spec.scenario import Scenario, load_scenario
from harness.spec.variant import SAFE_NAME
from harness.store import DEFAULT_DB, Store, existing_store, masked, store_location
from harness.targets.adb.client import LOST, DeviceError
from harness.targets.base import Target, TargetInfo
from harness.targets.adb.target import FOLDER, open_adb_targets


def _wide(stderr: bool) -> Console:
    """A console at least 120 columns wide, so piped output is not cut to 80."""
    return Console(stderr=stderr, width=max(Console(stderr=stderr).width, 120))


console = _wide(stderr=True)

# (metric, column heading) of the summary table printed after a run
SUMMARY_METRICS = (("ttft_ms", "TTFT ms"), ("decode_tokens_per_s", "decode tok/s"), ("e2e_ms", "e2e ms"),
                   ("peak_rss_bytes", "peak RSS"), ("weights_bytes", "weights"),
                   ("agreement_with_baseline", "agree"), ("exact_match", "exact"))


class _Parser(argparse.ArgumentParser):
    """Bad arguments are bad input too: one line, exit 2 (the help is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"harness: error: {self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a scenario and store its measurements")
    run.add_argument("scenario", type=Path, nargs="?", help="scenario file (not with --resume)")
    run.add_argument("--resume", metavar="RUN_ID", help="complete a stored run: only the repetitions it is missing")
    run.add_argument("--target", action="append", help="target to run on (repeatable); default: the scenario's")
    run.add_argument("--db", type=store_location, default=DEFAULT_DB,
                     help=f"results store: an SQLite file or postgresql://user@host:port/dbname (default {DEFAULT_DB})")
    run.add_argument("--json", type=Path, help="write the results document here")
    run.add_argument("--report", type=Path, help="write the HTML report here (default reports/<scenario>.html)")
    run.add_argument("--parallel", action="store_true",
                     help="run on the devices at once, one thread each (the local target first, alone)")
    run.add_argument("--run-id", type=_run_id, help="a farm run: each host runs its targets into this run id (made by the "
                                      "first, joined by the others; one --db for all)")

    report = commands.add_parser("report", help="render the HTML report of a stored run")
    report.add_argument("run_id", nargs="?", help="run id (default: the latest run)")
    report.add_argument("--db", type=store_location, default=DEFAULT_DB)
    report.add_argument("--out", type=Path, help="HTML file (default reports/<scenario>.html)")
    report.add_argument("--json", type=Path, help="also write the results document here")

    listing = commands.add_parser("list", help="list the runs in the store")
    listing.add_argument("--db", type=store_location, default=DEFAULT_DB)

    commands.add_parser("devices", help="list the devices attached to the adb server: identity, runtimes deployed")
    cleanup = commands.add_parser("cleanup", help=f"remove the harness folder ({FOLDER}) from adb devices")
    cleanup.add_argument("serial", nargs="*", help="devices (default: every attached device)")

    emulator = commands.add_parser("emulator", help="emulated Galaxy devices behind a loopback adb server")
    emulator_commands = emulator.add_subparsers(dest="emulator_command", required=True)
    serve = emulator_commands.add_parser(
        "serve", help="serve emulated devices until interrupted",
        description="Serve emulated Galaxy phones behind an adb server that listens on 127.0.0.1 only: "
                    "no other machine can reach it. Each device's shell commands run confined (bubblewrap: "
                    "an unprivileged user, no network, the host's files absent or read-only, the device's "
                    "folders at their device paths, its own processes only); any local process that "
                    "connects gets a shell on the emulated phone, not on this host.")
    serve.add_argument("--device", action="append", required=True, choices=sorted(PROFILES),
                       help="a device to emulate (repeatable)")
    serve.add_argument("--port", type=int, default=5037, help="loopback port (default 5037, adb's)")
    serve.add_argument("--root", type=Path, help="folder for the devices' sandboxes (default: a temporary one)")
    serve.add_argument("--name", type=_run_id, default="emu",
                       help="serials are NAME-DEVICE (default emu); a farm's servers each take their own")
    serve.add_argument("--unconfined-shells", action="store_true",
                       help="for a host without user namespaces: run device shells as this user on this "
                            "host's files (only device paths are rewritten); any local process that "
                            "connects to the port can then run commands as you")
    fault = emulator_commands.add_parser("fault", help="inject a fault into an emulated device",
                                         epilog="faults: " + "; ".join(f"{k}: {v}" for k, v in FAULTS.items()))
    fault.add_argument("serial")
    fault.add_argument("spec", help="e.g. drop-push, drop-run, hang, oom:200M, slow:1M, full, thermal:3:48, clear")
    fault.add_argument("--port", type=int, default=5037)

    hub = commands.add_parser("aihub-emulator", help="a loopback Qualcomm AI Hub for tests and demos")
    hub_commands = hub.add_subparsers(dest="aihub_command", required=True)
    hub_serve = hub_commands.add_parser("serve", help="serve it and write the qai-hub profile 'emulator' for it")
    hub_serve.add_argument("--port", type=int, default=8765)

    _add_compare(commands)
    _add_calibrate(commands)
    _add_history(commands)
    _add_export(commands)
    return parser


def _add_compare(commands) -> None:
    compare = commands.add_parser("compare", help="verdicts per metric, variant and target: CURRENT against BASELINE")
    compare.add_argument("runs", nargs="*", metavar="RUN",
                         help="BASELINE CURRENT (run ids or results JSON files); with --against: [CURRENT]")
    compare.add_argument("--against", choices=["last-good"],
                         help="baseline: the latest earlier good run of the same scenario")
    compare.add_argument("--db", type=store_location, default=DEFAULT_DB)
    compare.add_argument("--markdown", type=Path, help="write a Markdown summary here (e.g. $GITHUB_STEP_SUMMARY)")


def _add_calibrate(commands) -> None:
    calibrate = commands.add_parser("calibrate", help="run a scenario N times (A/A) and store each metric's noise")
    calibrate.add_argument("scenario", type=Path)
    calibrate.add_argument("--runs", type=_calibration_runs, default=3,
                           help="runs of the same build (at least 2; default 3): the noise is the largest over their pairs")
    calibrate.add_argument("--target", action="append", help="target to run on (repeatable); default: the scenario's")
    calibrate.add_argument("--db", type=store_location, default=DEFAULT_DB)


def _calibration_runs(text: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"need a whole number of at least 2, got {text!r}")
    return int(text)


def _add_history(commands) -> None:
    history = commands.add_parser("history", help="series per variant, target and metric over a scenario's runs")
    history.add_argument("scenario", help="scenario name (as in `harness list`)")
    history.add_argument("--metric", action="append", choices=list(METRICS), help="only this metric (repeatable)")
    history.add_argument("--db", type=store_location, default=DEFAULT_DB)


def _add_export(commands) -> None:
    export = commands.add_parser("export", help="export a stored run: pytest-benchmark JSON, or samples as CSV/Parquet")
    export.add_argument("run_id", nargs="?", help="run id (default: the latest run)")
    export.add_argument("--format", choices=FORMATS, required=True)
    export.add_argument("--out", type=Path, help="file to write (default reports/<run id>.<json|csv|parquet>)")
    export.add_argument("--db", type=store_location, default=DEFAULT_DB)


def _run_id(text: str) -> str:
    if not re.fullmatch(SAFE_NAME, text):
        raise argparse.ArgumentTypeError(f"{text!r}: letters, digits, '.', '_' and '-', at most 64")
    return text


def _joinable(store: Store, run_id: str | None, scenario: Scenario) -> None:
    """A farm run's hosts must measure the same scenario file."""
    run = store.run(run_id) if run_id else None
    if run is not None and run.scenario_sha256 != scenario.sha256:
        raise HarnessError(f"{scenario.path}: --run-id: run {run_id} measures {run.scenario_path} "
                           f"(another scenario, or this one changed since)")


def cmd_run(args: argparse.Namespace) -> int:
    if (args.scenario is None) == (args.resume is None):
        raise HarnessError("harness run: give a scenario file, or --resume RUN_ID (not both)")
    if isinstance(args.db, Path):  # a PostgreSQL store is checked as it is opened
        check_store(args.db)
    if args.json is not None:
        check_output(args.json, "--json")
    if args.resume:
        store = _existing_store(args.db)
        scenario, targets = resumable(store, args.resume)
        total = runner_processes(scenario, len(targets))
        keys = {target.info.key for target in targets}
        left = total - len(kept(store, args.resume, scenario, targets))
        console.print(f"resuming {args.resume}: {left} of {total} runner processes left "
                      f"on {', '.join(sorted(keys))}")
    else:
        scenario = load_scenario(args.scenario)
        check_output(args.report or Path("reports") / f"{scenario.name}.html", "--report")
        targets = resolve_targets(scenario, args.target)
        store = Store(args.db)
        _joinable(store, args.run_id, scenario)
        console.print(plan_text(scenario, targets, store, args.parallel), markup=False, highlight=False, soft_wrap=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task(scenario.name, total=None if args.resume else total_steps(scenario, len(targets)))
        processes: dict[str, int] = {}  # one bar per runner process, named by what it runs

        def step(what: str) -> None:
            if what not in processes:
                processes[what] = progress.add_task(what, total=steps_per_process(scenario))
            progress.update(processes[what], advance=1)
            progress.update(task, advance=1)

        if args.resume:
            run_id = args.resume
            resume_run(store, run_id, scenario, targets, on_step=step, parallel=args.parallel)
        else:
            run_id = run_scenario(scenario, targets, store, on_step=step, parallel=args.parallel, run_id=args.run_id)
    document = build_results(store, run_id)
    verdicts = evaluate(document)
    _print_summary(document, verdicts)
    _write_outputs(store, document, verdicts, args.json, args.report)
    return run_exit_code(document, verdicts)


def plan_text(scenario: Scenario, targets: list[Target], store: Store, parallel: bool = False) -> str:
    """What `harness run` is about to do, said before the first runner starts, with a time
    estimate from the store's earlier runs of the scenario when it has any (in parallel, the
    local target's processes and then one device's)."""
    workload = scenario.spec.workload
    processes = runner_processes(scenario, len(targets))
    text = (f"{scenario.name}: {len(scenario.variants)} variants x {len(targets)} target(s) "
            f"({', '.join(t.info.key for t in targets)}) x {workload.repetitions} repetitions = "
            f"{processes} runner processes; each {len(scenario.prompts)} prompts + {workload.warmup} warm-up, "
            f"{workload.max_new_tokens} new tokens")
    estimate = seconds_per_process(store, scenario.name)
    if estimate is None:
        return text + f"; no earlier run of {scenario.name} in {store.path} to estimate the time from"
    seconds, runs = estimate
    in_sequence = processes
    if parallel:
        local = sum(t.info.kind == "local" for t in targets)
        in_sequence = runner_processes(scenario, local + (local < len(targets)))
    return text + f"; about {fmt(seconds * in_sequence / 60)} min (from {runs} earlier run(s) in {store.path})"


def run_exit_code(document: dict, verdicts: list[Verdict]) -> int:
    """0: every variant ran and every budget passed; 1: a variant or a budget failed (or a
    decisive budget was inconclusive); 3: no failure, but some budget was inconclusive."""
    if any(r["status"] != "ok" for r in document["results"]) or any(v.failed for v in verdicts):
        return 1
    return 3 if any(v.outcome == "inconclusive" for v in verdicts) else 0


def _run_with_progress(scenario, targets, store: Store) -> str:
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task(scenario.name, total=total_steps(scenario, len(targets)))
        return run_scenario(scenario, targets, store,
                            on_step=lambda what: progress.update(task, advance=1, description=what))


def cmd_report(args: argparse.Namespace) -> int:
    store = _existing_store(args.db)
    document = build_results(store, args.run_id)
    _write_outputs(store, document, evaluate(document), args.json, args.out)
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


def cmd_compare(args: argparse.Namespace) -> int:
    store = existing_store(args.db)
    if args.against:
        if len(args.runs) > 1:
            raise HarnessError("compare: with --against give at most one run (CURRENT, default: the latest)")
        current = _document(store, args.runs[0] if args.runs else None)
        record = store.run(current["run_id"]) if store else None
        if record is None:
            raise HarnessError(f"{masked(args.db)}: --against last-good: run {current['run_id']} is not in this store")
        baseline = build_results(store, last_good(store, record).run_id)
    elif len(args.runs) == 2:
        baseline, current = (_document(store, ref) for ref in args.runs)
    else:
        raise HarnessError("compare: give BASELINE and CURRENT (run ids or results JSON files), "
                           "or --against last-good [CURRENT]")
    changes = compare(baseline, current, store.noise(current["scenario"]["name"]) if store else None)
    _print_changes(baseline, current, changes)
    if args.against and store:
        store.record_comparison(current["run_id"], baseline["run_id"], len(regressions(changes)))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        against = "last good" if args.against else "baseline"
        args.markdown.write_text(markdown_summary(baseline, current, changes, against), encoding="utf-8")
    return 1 if regressions(changes) else 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    if isinstance(args.db, Path):  # a PostgreSQL store is checked as it is opened
        check_store(args.db)
    scenario = load_scenario(args.scenario)
    targets = resolve_targets(scenario, args.target)
    store = Store(args.db)
    runs = [build_results(store, _run_with_progress(scenario, targets, store)) for _ in range(args.runs)]
    noise = aa_noise(runs)
    store.set_noise(scenario.name, runs[0]["run_id"], runs[-1]["run_id"], noise)
    table = Table("target", "metric", "A/A noise", title=f"{scenario.name}: noise of the {len(runs)} runs "
                  f"{runs[0]['run_id']} to {runs[-1]['run_id']}, the largest over their pairs (floor for 'regressed')")
    for (target, metric), value in sorted(noise.items()):
        table.add_row(target, metric, f"{value:.1%}")
    _wide(stderr=False).print(table)
    return 0 if all(r["status"] == "ok" for d in runs for r in d["results"]) else 1


def cmd_history(args: argparse.Namespace) -> int:
    store = _existing_store(args.db)
    series = history(store, args.scenario, tuple(args.metric) if args.metric else None)
    if not series:
        raise HarnessError(f"{store.path}: scenario: no runs of {args.scenario!r}; "
                           f"stored: {', '.join(sorted({r.scenario for r in store.runs()})) or 'none'}")
    table = Table(Column("variant", overflow="fold"), "target", "metric",
                  title=f"{args.scenario}: {len(store.runs(args.scenario))} runs "
                  f"(step rule: see README)")
    for heading in ("runs", "first median", "last median"):
        table.add_column(heading, justify="right")
    table.add_column("step changes (run: verdict, new/old median)")
    for s in series:
        target = s.target + (" (emulated)" if s.emulated else "")
        steps = "; ".join(f"{p.run_id}: {p.step} x{p.change:.2f}" for p in s.steps) or "-"
        table.add_row(s.variant, target, s.metric, str(len(s.points)), fmt(s.points[0].median),
                      fmt(s.points[-1].median), steps, style="bold" if s.steps else "")
    _wide(stderr=False).print(table)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    store = _existing_store(args.db)
    run = store.run(args.run_id)
    if run is None:
        raise HarnessError(f"{store.path}: run_id: no run {args.run_id!r} in the store" if args.run_id
                           else f"{store.path}: the store holds no runs")
    out = args.out or Path("reports") / f"{run.run_id}{SUFFIX[args.format]}"
    export(store, run.run_id, args.format, out)
    console.print(f"{args.format}: {out}")
    return 0


def _document(store: Store | None, ref: str | None) -> dict:
    """A results document: from a JSON file, or a run id (None: the latest run) in the store."""
    if ref is not None and ref.endswith(".json"):
        try:
            return json.loads(Path(ref).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise HarnessError(f"{ref}: not a readable results JSON file: {exc}") from None
    if store is None:
        raise HarnessError("--db: no results store there; run a scenario first")
    return build_results(store, ref)


def _print_changes(baseline: dict, current: dict, changes: list[Change]) -> None:
    """One table per variant x target, so long variant keys never squeeze the numbers."""
    out = _wide(stderr=False)
    out.print(f"{current['scenario']['name']}: run {current['run_id']} against {baseline['run_id']}",
              style="bold", markup=False, highlight=False)
    styles = {"regressed": "bold red", "improved": "green", "environment differed": "yellow",
              "too noisy to tell": "yellow", "too few processes": "yellow", "unchanged": ""}
    for (variant, target, emulated), group in groupby(changes, key=lambda c: (c.variant, c.target, c.emulated)):
        group = list(group)
        table = Table(title=f"{variant} @ {target}" + (" (emulated)" if emulated else ""), title_justify="left")
        table.add_column("metric", no_wrap=True)
        for heading in ("baseline", "current", "ratio", "interval", "p", "q", "floor"):
            table.add_column(heading, justify="right", no_wrap=True)
        table.add_column("verdict", no_wrap=True)
        for c in group:
            interval = f"[{fmt(c.interval[0])}, {fmt(c.interval[1])}]" + (" range" if c.ratio.kind == "range" else "")
            table.add_row(c.metric, fmt(c.baseline), fmt(c.current), fmt(c.ratio.value), interval, fmt(c.p_value),
                          fmt(c.q_value), f"{c.floor:.0%}", c.verdict, style=styles[c.verdict])
        out.print(table)
        first = group[0]
        out.print(f"processes per run: {first.ratio.processes} or more; estimates are medians over processes; "
                  f"q: false discovery control over all {len(changes)} comparisons", markup=False, highlight=False)
        if first.environment:
            console.print(f"environment differed: {first.environment}", style="yellow", markup=False,
                          highlight=False)
    for document in (baseline, current):
        if delay := document["environment"].get("test_delay_ms_per_token"):
            console.print(f"run {document['run_id']} was slowed on purpose: test delay {delay:g} ms per decode step",
                          style="bold yellow", markup=False, highlight=False)


def _existing_store(location: Path | str) -> Store:
    store = existing_store(location)
    if store is None:
        raise HarnessError(f"{masked(location)}: --db: no results store there; run a scenario first")
    return store


def _write_outputs(store: Store, document: dict, verdicts: list[Verdict], json_path: Path | None,
                   html_path: Path | None) -> None:
    html_path = html_path or Path("reports") / f"{document['scenario']['name']}.html"
    trends = history(store, document["scenario"]["name"], TREND_METRICS, until=document["run_id"])
    write_html(document, html_path, verdicts, trends)
    console.print(f"report: {html_path}")
    if json_path:
        write_json(document, json_path)
        console.print(f"results: {json_path}")


def _print_summary(document: dict, verdicts: list[Verdict]) -> None:
    table = Table(title=f"{document['scenario']['name']} · run {document['run_id']} (medians)")
    table.add_column("variant", overflow="fold")  # two variants may differ only at the end of the key
    table.add_column("target")
    for _, heading in SUMMARY_METRICS:
        table.add_column(heading, justify="right")
    table.add_column("status")
    for result in document["results"]:
        target = result["target"]
        label = TargetInfo(**target).key + (" (emulated)" if target["emulated"] else "")
        cells = [_summary_cell(result["metrics"], name) for name, _ in SUMMARY_METRICS]
        table.add_row(variant_of(result).key, label, *cells, result["status"])
    console.print(table)
    for verdict in verdicts:
        style = "bold red" if verdict.failed else "green" if verdict.passed else "yellow"
        console.print(f"budget: {verdict.text}", style=style, markup=False, highlight=False, soft_wrap=True)


def _summary_cell(metrics: dict, name: str) -> str:
    """The measured median, else the derived one marked "~" (AI Hub profiles steps, not requests), else "-"."""
    if name in metrics:
        return _cell(metrics[name])
    derived = metrics.get(f"{name}_derived")
    return f"~{_cell(derived)}" if derived else "-"


def _cell(metric: dict) -> str:
    value = metric["median"]
    if metric["unit"] == "bytes":
        return f"{value / 2**20:,.0f} MiB"
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def cmd_devices(args: argparse.Namespace) -> int:
    table = Table("serial", "model", "SoC", "platform", "SDK", "emulated")
    table.add_column("runtimes deployed", overflow="fold")
    table.add_column("fingerprint", overflow="fold")
    for target in open_adb_targets(None):
        info = target.info
        try:
            runtimes = "\n".join(f"{name}: {version}" for name, version in target.deployed_runtimes().items())
        except (*LOST, DeviceError) as exc:  # the device went away while asked: say so, list the others
            runtimes = f"(could not be read: {type(exc).__name__} {exc})"
        table.add_row(info.serial, info.model, info.soc, info.platform, info.sdk, "yes" if info.emulated else "no",
                      runtimes or "none", info.fingerprint)
    _wide(stderr=False).print(table)
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    for target in [t for serial in args.serial for t in open_adb_targets(serial)] or open_adb_targets(None):
        target.cleanup()
        console.print(f"{target.info.serial}: removed {FOLDER}")
    return 0


def cmd_emulator(args: argparse.Namespace) -> int:
    if args.emulator_command == "fault":
        try:
            inject(args.port, args.serial, args.spec)
        except (OSError, AdbError) as exc:
            raise HarnessError(f"emulator fault {args.spec!r} on {args.serial}: {exc}") from None
        return 0
    with tempfile.TemporaryDirectory(prefix="hil-emulator-") as tmp:
        try:
            server = AdbServer(args.device, args.root or Path(tmp), args.port, not args.unconfined_shells, args.name)
        except ConfinementError as exc:
            raise HarnessError(f"emulator serve: {exc}") from None
        for device in server.devices.values():
            console.print(f"{device.serial}: {device.profile.model} ({device.profile.props['ro.soc.model']}), "
                          f"sandbox {device.root}")
        console.print(f"adb server on 127.0.0.1:{server.port} (adb -P {server.port} devices -l)")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so the sandboxes are removed
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
    return 0


def cmd_aihub_emulator(args: argparse.Namespace) -> int:
    from harness.emulators.aihub.emulator import serve

    serve(args.port, Path("~/.qai_hub/emulator.ini").expanduser())
    return 0


COMMANDS = {"run": cmd_run, "report": cmd_report, "list": cmd_list, "compare": cmd_compare,
            "calibrate": cmd_calibrate, "history": cmd_history, "export": cmd_export, "devices": cmd_devices,
            "cleanup": cmd_cleanup, "emulator": cmd_emulator, "aihub-emulator": cmd_aihub_emulator}


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
