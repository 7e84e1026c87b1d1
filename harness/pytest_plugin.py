"""pytest plugin: `pytest scenarios/` collects scenario files, one item per variant x target.

The first item of a file runs the whole scenario (repetitions interleaved across its
variants, stored like `harness run`); every item then checks its variant's status and
budgets. Under pytest-xdist (`-n auto`) items are grouped by target (`--dist loadgroup`,
set for `-n`'s default `load`), so each device runs one thing at a time while devices run
in different workers at once; each worker runs its targets' part into one run id that all
workers share (give them one `--harness-db`: PostgreSQL, or an SQLite file on this host). A missed budget fails with the variant, the measured value and the limit.
With `--harness-against last-good` (or a run id) every item also carries its compare
verdicts as user properties (in `--junitxml`) and fails on a regression.
"""

from __future__ import annotations

import time
import uuid
import warnings
from pathlib import Path

import pytest

from harness.analysis.budgets import Verdict, evaluate, variant_of
from harness.analysis.compare import Change, compare, last_good, regressions
from harness.errors import HarnessError
from harness.output.format import fmt
from harness.run.orchestrator import resolve_targets, run_scenario
from harness.analysis.results import build_results
from harness.spec.scenario import Scenario, Variant, load_scenario
from harness.store import DEFAULT_DB, Store, store_location
from harness.targets.base import Target, TargetInfo


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "hil-harness scenarios")
    group.addoption("--harness-db", type=store_location, default=DEFAULT_DB,
                    help=f"results store: an SQLite file or a postgresql:// URL (default {DEFAULT_DB})")
    group.addoption("--harness-target", action="append", help="run scenarios on this target instead (repeatable)")
    group.addoption("--harness-run-id", metavar="ID",
                    help="a farm run: every host's session runs into the run ID-<scenario name> (default: "
                         "this session's own id)")
    group.addoption("--harness-against", metavar="RUN",
                    help="compare each scenario run with this run id, or 'last-good'; a regression fails its item")


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "dist", "no") == "load":  # xdist's default for -n: group by device instead
        config.option.dist = "loadgroup"
    config.stash[SESSION] = (config.workerinput["harness_session"] if hasattr(config, "workerinput")
                             else config.getoption("harness_run_id")
                             or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6])


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist's controller gives every worker the session's id: their run ids are the same."""
    node.workerinput["harness_session"] = node.config.stash[SESSION]


SESSION = pytest.StashKey[str]()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix in (".yaml", ".yml") and file_path.parent.name == "scenarios":
        return ScenarioCollector.from_parent(parent, path=file_path)
    return None


class BudgetInconclusive(pytest.PytestWarning):
    """A budget whose interval straddles its bound: not a failure, unless it is `decisive`."""


class ScenarioFailure(Exception):
    """A variant failed or missed a budget; its message is the whole report."""


class ScenarioCollector(pytest.File):
    scenario: Scenario
    targets: list[Target]
    _document: dict | None = None
    changes: list[Change] = []  # compare verdicts of the run, with --harness-against
    compared_against: str | None = None  # what the run was compared with, for the properties

    def collect(self):
        self.scenario = load_scenario(self.path)
        self.targets = resolve_targets(self.scenario, self.config.getoption("harness_target"))
        self._ran: set[str] = set()
        for target in self.targets:
            for variant in self.scenario.variants:
                item = VariantItem.from_parent(self, name=f"{variant.key}@{target.info.key}",
                                               variant=variant, target_key=target.info.key)
                item.add_marker(pytest.mark.xdist_group(target.info.key))
                yield item

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, HarnessError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def results(self, target_key: str) -> tuple[dict, list[Verdict]]:
        """Run the scenario on first use: on every target, or in an xdist worker on this item's
        target, into the run its other workers share; the results serve every item."""
        worker = hasattr(self.config, "workerinput")
        shared = worker or self.config.getoption("harness_run_id")
        todo = [t for t in self.targets if t.info.key not in self._ran and (not worker or t.info.key == target_key)]
        if todo:
            store = Store(self.config.getoption("harness_db"))
            run_id = run_scenario(self.scenario, todo, store,
                                  run_id=f"{self.config.stash[SESSION]}-{self.scenario.name}" if shared else None)
            self._ran |= {t.info.key for t in todo}
            self._document = build_results(store, run_id)
            self._compare(store)
            store.close()
        return self._document, evaluate(self._document)

    def _compare(self, store: Store) -> None:
        against = self.config.getoption("harness_against")
        if against is None:
            return
        if against == "last-good":
            try:
                against = last_good(store, store.run(self._document["run_id"])).run_id
            except HarnessError:
                self.compared_against = "no earlier good run to compare with"
                return
        baseline = build_results(store, against)
        self.changes = compare(baseline, self._document, store.noise(self.scenario.name))
        self.compared_against = f"run {against}"
        store.record_comparison(self._document["run_id"], against, len(regressions(self.changes)))


class VariantItem(pytest.Item):
    def __init__(self, *, variant: Variant, target_key: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.variant = variant
        self.target_key = target_key

    def runtest(self) -> None:
        document, verdicts = self.parent.results(self.target_key)
        self.user_properties.append(("run_id", document["run_id"]))
        result = next(r for r in document["results"] if _keys(r) == (self.variant.key, self.target_key))
        if result["status"] != "ok":
            raise ScenarioFailure(f"{self.variant.key} on {self.target_key} failed: {result['error']}")
        mine = [v for v in verdicts if (v.variant, v.target) == (self.variant.key, self.target_key)]
        for verdict in mine:
            self.user_properties.append(("budget", verdict.text))
        missed = [v.text for v in mine if v.failed]
        for verdict in mine:
            if verdict.outcome == "inconclusive" and not verdict.failed:
                warnings.warn(BudgetInconclusive(verdict.text))
        regressed = self._verdicts()
        problems = (["budget missed:", *missed] if missed else []) + (
            [f"regressed against {self.parent.compared_against}:", *regressed] if regressed else [])
        if problems:
            raise ScenarioFailure("\n  ".join(problems))

    def _verdicts(self) -> list[str]:
        """Record this variant's compare verdicts as properties; the regressions, as failure lines."""
        if self.parent.compared_against is None:
            return []
        self.user_properties.append(("compared_against", self.parent.compared_against))
        mine = [c for c in self.parent.changes if (c.variant, c.target) == (self.variant.key, self.target_key)]
        for c in mine:
            self.user_properties.append((f"compare:{c.metric}", f"{c.verdict}: {_change_text(c)}"))
        return [f"{c.metric} {_change_text(c)}, floor {c.floor:.0%}" for c in regressions(mine)]

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, (ScenarioFailure, HarnessError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{self.parent.scenario.name}: {self.name}"


def _keys(result: dict) -> tuple[str, str]:
    return variant_of(result).key, TargetInfo(**result["target"]).key


def _change_text(c: Change) -> str:
    return (f"ratio {fmt(c.ratio.value)} [{fmt(c.interval[0])}, {fmt(c.interval[1])}] ({c.ratio.basis}), "
            f"p {fmt(c.p_value)}, q {fmt(c.q_value)}")
