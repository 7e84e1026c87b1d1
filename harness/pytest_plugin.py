"""pytest plugin: `pytest scenarios/` collects scenario files, one item per variant x target.

The first item of a file runs the whole scenario (repetitions interleaved across its
variants, stored like `harness run`); every item then checks its variant's status and
budgets. A missed budget fails with the variant, the measured value and the limit.
With `--harness-against last-good` (or a run id) every item also carries its compare
verdicts as user properties (in `--junitxml`) and fails on a regression.
"""

from __future__ import annotations

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
from harness.store import DEFAULT_DB, Store
from harness.targets.base import Target, TargetInfo


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "hil-harness scenarios")
    group.addoption("--harness-db", type=Path, default=DEFAULT_DB, help=f"results store (default {DEFAULT_DB})")
    group.addoption("--harness-target", action="append", help="run scenarios on this target instead (repeatable)")
    group.addoption("--harness-against", metavar="RUN",
                    help="compare each scenario run with this run id, or 'last-good'; a regression fails its item")


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
        for target in self.targets:
            for variant in self.scenario.variants:
                yield VariantItem.from_parent(self, name=f"{variant.key}@{target.info.key}",
                                              variant=variant, target_key=target.info.key)

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, HarnessError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def results(self) -> tuple[dict, list[Verdict]]:
        """Run the scenario once, on first use; the same results serve every item."""
        if self._document is None:
            store = Store(self.config.getoption("harness_db"))
            run_id = run_scenario(self.scenario, self.targets, store)
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
        document, verdicts = self.parent.results()
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
