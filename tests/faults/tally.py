"""The suite's seed and the session's tally.

The seed comes from `ARCHDEPLOY_FAULT_SEED`; when unset it is CI_SEED in CI (so a red build
is the code, not the draw) and random elsewhere. It is printed with the table and in every
failure, so any run replays exactly on the embedded setup (the emulator setup replays the
same faults; thread timing varies).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from tests.faults.invariants import Observed
from tests.faults.scenarios import Fault

SEED_ENV = "ARCHDEPLOY_FAULT_SEED"
# CI's seed: its emulator runs include a slow build under a repeated request (issue 12).
CI_SEED = 424461


def suite_seed(environ: Mapping[str, str] = os.environ) -> tuple[int, str]:
    """The seed and where it came from: `ARCHDEPLOY_FAULT_SEED` (`random` asks for a fresh
    one, in CI too), else CI_SEED when `CI` is set, else a fresh random seed."""
    value = environ.get(SEED_ENV, "").strip()
    if value and value != "random":
        return int(value), f"from {SEED_ENV}"
    if not value and environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return CI_SEED, "fixed in CI"
    return random.SystemRandom().randrange(1, 1_000_000), "random"


@dataclass
class Tally:
    """Runs, faults and violations over the session, printed as a table at its end."""

    seed: int
    origin: str = ""  # how the seed was chosen: fixed in CI, from the environment, random
    runs: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    faults: Counter[Fault] = field(default_factory=Counter)
    fault_runs: Counter[Fault] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, setup: str, observed: Observed, violations: list[str]) -> None:
        self.runs[setup] += 1
        status = observed.result.status.value if observed.result else "unfinished"
        self.statuses[(setup, status)] += 1
        self.violations[setup] += len(violations)
        self.faults.update(observed.scenario.triggered)
        self.fault_runs.update(set(observed.scenario.triggered))
        self.examples += [f"{observed.scenario.describe()}: {v}" for v in violations][:5]

    def lines(self) -> list[str]:
        origin = f"{self.origin}; " if self.origin else ""
        out = [f"seed {self.seed} ({origin}replay: {SEED_ENV}={self.seed})", ""]
        out.append(f"{'setup':<44}{'runs':>6}{'succeeded':>11}{'failed':>8}{'violations':>12}")
        for setup in sorted(self.runs):
            out.append(
                f"{setup:<44}{self.runs[setup]:>6}{self.statuses[(setup, 'succeeded')]:>11}"
                f"{self.statuses[(setup, 'failed')]:>8}{self.violations[setup]:>12}"
            )
        total = sum(self.runs.values())
        succeeded = sum(n for (_, status), n in self.statuses.items() if status == "succeeded")
        failed = sum(n for (_, status), n in self.statuses.items() if status == "failed")
        violations = sum(self.violations.values())
        out.append(f"{'total':<44}{total:>6}{succeeded:>11}{failed:>8}{violations:>12}")
        out += ["", f"{'fault injected':<44}{'times':>6}{'in runs':>11}"]
        for fault in Fault:
            out.append(f"{fault.value:<44}{self.faults[fault]:>6}{self.fault_runs[fault]:>11}")
        out += ["", f"invariant violations: {violations}", *self.examples[:20]]
        return out
