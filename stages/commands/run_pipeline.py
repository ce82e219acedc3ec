"""Run the pipeline as far as it can go, then say what could not run and why.

    run-pipeline [dvc repro options and targets]

This is ``dvc repro --keep-going``: a stage that fails stops only the stages that need
its outputs. Offline, the downloads of MNIST, BreastMNIST and the ImageNet weights fail,
and the toy exercise still runs to its metrics and plots. It ends with one line per
stage that could not run, the reason that stage gave (for a download, where a local copy
goes and the params key that names it), and the stages skipped because of it. The exit status is dvc
repro's: 0 when every stage ran or was up to date, non-zero (255) when one could not.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field

RUNNING = re.compile(r"^Running stage '(?P<stage>[^']+)'")
STAGE_ERROR = re.compile(r"^error: (?P<reason>.+)")  # what stages.shared.runner.run_stage prints
FAILED_RUN = re.compile(r"failed to run: .*, exited with (?P<status>-?\d+)$")  # DVC's, for any failure
STOP_WAIT_S = 10  # how long DVC and its stage get to end after each signal
SKIPPED = re.compile(r"Stages? (?P<stages>'.+') will be skipped")  # "Stages 'a', 'b' and 'c' will be ..."


@dataclass
class ReproLog:
    """What a ``dvc repro --keep-going`` said, read line by line."""

    ran: list[str] = field(default_factory=list)  # every stage it started, in order
    failed: dict[str, list[str]] = field(default_factory=dict)  # stage -> its error lines
    skipped: list[str] = field(default_factory=list)
    _stage: str | None = None

    def read(self, line: str) -> None:
        if match := RUNNING.match(line):
            self._stage = match["stage"]
            self.ran.append(self._stage)
        elif (match := STAGE_ERROR.match(line)) and self._stage:
            self.failed.setdefault(self._stage, []).append(match["reason"])
        elif (match := FAILED_RUN.search(line)) and self._stage and self._stage not in self.failed:
            self.failed[self._stage] = [f"exited with {match['status']} (its output is above)"]
        elif match := SKIPPED.search(line):
            # A stage that needs two failed ones (fit_knn: the features and the groups) is named once.
            self.skipped += [stage for stage in re.findall(r"'([^']+)'", match["stages"]) if stage not in self.skipped]

    def summary(self) -> list[str]:
        lines = [f"run-pipeline: {len(self.failed)} stage(s) could not run:"]
        lines += [f"  {stage}: {' '.join(reasons)}" for stage, reasons in self.failed.items()]
        if self.skipped:
            lines.append(f"  skipped, as they need those: {', '.join(self.skipped)}")
        lines.append("Every other stage ran or was up to date; see docs/offline.md for local copies of the data.")
        return lines


def repro(args: list[str]) -> tuple[int, ReproLog]:
    """``dvc repro ARGS``, its output shown as it comes and read into a ``ReproLog``;
    returns its exit status and the log."""
    log = ReproLog()
    # One stream for DVC's lines and the stages' own, so an error follows its stage. DVC
    # gets a process group of its own, so that Ctrl-C or an error here reaches it and its
    # stage only through `stop`, which waits for them to end.
    with subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    ) as dvc:
        try:
            for line in dvc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                log.read(line.rstrip("\n"))
        except BaseException:
            stop(dvc)
            raise
    return dvc.returncode, log


def stop(dvc: subprocess.Popen) -> None:
    """Interrupt DVC and the stage it runs, as Ctrl-C at a terminal does, and wait until they
    have ended: a caller that cleans up afterwards (check-reproduction puts files back) must
    not have DVC write after it.

    A SIGINT that lands while DVC starts a stage can miss the stage (it reaches the new
    process before the stage's Python handles it), and DVC ignores SIGINT while a stage
    runs; so until the group has ended, it is interrupted again every ``STOP_WAIT_S``
    seconds, then terminated, then killed."""
    rest = None
    for sig in (signal.SIGINT, signal.SIGINT, signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(dvc.pid, sig)
        except ProcessLookupError:  # every process of the group has ended
            break
        try:  # drains the output too, which a full pipe would otherwise block
            rest, _ = dvc.communicate(timeout=STOP_WAIT_S)
            break
        except subprocess.TimeoutExpired:
            continue
    if rest is None:
        rest, _ = dvc.communicate()
    sys.stdout.write(rest)


def main(argv: list[str]) -> int:
    status, log = repro(["--keep-going", *argv])
    if log.failed:
        print("\n" + "\n".join(log.summary()))
    return status


def cli() -> None:
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        # `repro` has interrupted DVC and waited for it; its lines above say how far it got.
        print("run-pipeline: interrupted; DVC and the stage it was running have stopped", file=sys.stderr)
        sys.exit(130)  # a shell's status for a command ended by Ctrl-C


if __name__ == "__main__":
    cli()
