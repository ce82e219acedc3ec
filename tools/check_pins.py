"""Fail when a pin of constraints.txt cannot be installed on a Python version that
pyproject.toml's requires-python admits: the range pip reads must be the one the pins hold for.

    python tools/check_pins.py [--dest DIR]

For each minor version in requires-python (which must have an upper bound), pip downloads
every pin with --no-deps, as wheels for that version and this machine's platform. A pin
that publishes no wheel for any of the versions but an sdist (pure Python, such as
antlr4-python3-runtime 4.9.3) counts when pip can download its sdist: pip builds it on
install. Prints one line per version; exits 1 naming the pins missing for each, 2 when it
cannot check. Needs the package index; DIR keeps the downloads, so a second run fetches
only the index pages.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.tags import platform_tags

PROJECT = Path(__file__).resolve().parents[1]
# pip spends its time on the index's answers, one project at a time: several pips at once.
CHUNKS, WORKERS = 3, 4
NOT_FOUND = re.compile(r"No matching distribution found for (\S+)")


class CheckError(Exception):
    """The check cannot run: the message is one line naming the file or the failing command."""


def admitted_versions(pyproject: Path) -> list[str]:
    """The Python minor versions (3.X) that the project's requires-python admits."""
    text = tomllib.loads(pyproject.read_text())["project"].get("requires-python")
    if not text:
        raise CheckError(f"{pyproject}: project.requires-python is not set")
    spec = SpecifierSet(text)
    if spec.contains("3.999"):
        raise CheckError(
            f"{pyproject}: requires-python {text!r} has no upper bound; name the newest Python every pin installs on"
        )
    # A minor version counts when any of its releases fits (">=3.11.4" still admits 3.11).
    versions = [f"3.{minor}" for minor in range(100) if spec.contains(f"3.{minor}") or spec.contains(f"3.{minor}.999")]
    if not versions:
        raise CheckError(f"{pyproject}: requires-python {text!r} admits no Python 3 version")
    return versions


def read_pins(constraints: Path) -> list[str]:
    """The ``name==version`` lines of a pip-freeze-style file."""
    pins = [line.strip() for line in constraints.read_text().splitlines()]
    pins = [pin for pin in pins if pin and not pin.startswith("#")]
    if not pins:  # else every version would pass, having checked nothing
        raise CheckError(f"{constraints}: no pins")
    return pins


def download(pins: list[str], version: str, dest: Path, binary: str) -> set[str]:
    """The pins pip cannot download for ``version`` into a folder of ``dest`` (``binary``:
    "--only-binary" for wheels, "--no-binary" for sdists): pip stops at the first one it
    cannot find, so leave it out and go on with the rest."""
    platforms = [arg for tag in platform_tags() for arg in ("--platform", tag)]
    missing, todo = set(), list(pins)
    while todo:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                f"{binary}=:all:",
                "--python-version",
                version,
                *platforms,
                "--dest",
                str(dest / f"cp{version.replace('.', '')}"),
                *todo,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode == 0:
            return missing
        found = NOT_FOUND.search(result.stderr)
        if not found or found.group(1) not in todo:
            errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")] or ["no message"]
            raise CheckError(f"pip download for Python {version} failed: {errors[-1]}")
        missing.add(found.group(1))
        todo.remove(found.group(1))
    return missing


def missing_for_each(pins: list[str], versions: list[str], dest: Path, binary: str) -> dict[str, set[str]]:
    """The pins pip cannot download, by version; the pins in chunks, several pips at once."""
    chunks = [chunk for start in range(CHUNKS) if (chunk := pins[start::CHUNKS])]
    tasks = [(chunk, version) for version in versions for chunk in chunks]
    missing = {version: set() for version in versions}
    with ThreadPoolExecutor(WORKERS) as pool:
        found = pool.map(download, *zip(*tasks), repeat(dest), repeat(binary))
        for (_, version), pins_missing in zip(tasks, found):
            missing[version] |= pins_missing
    return missing


def missing_pins(pins: list[str], versions: list[str], dest: Path) -> dict[str, set[str]]:
    """The pins that cannot be installed, by version."""
    no_wheel = missing_for_each(pins, versions, dest, "--only-binary")
    sdist_only = sorted(set.intersection(*no_wheel.values()))
    if sdist_only:
        no_sdist = missing_for_each(sdist_only, versions, dest, "--no-binary")
        for version in versions:
            no_wheel[version] -= set(sdist_only) - no_sdist[version]
    return no_wheel


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dest",
        type=Path,
        default=Path("/tmp/pin-downloads"),
        help="where the downloads are kept, a folder per version (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        versions = admitted_versions(PROJECT / "pyproject.toml")
        pins = read_pins(PROJECT / "constraints.txt")
        missing = missing_pins(pins, versions, args.dest)
    except CheckError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for version in versions:
        names = ", ".join(sorted(missing[version], key=str.lower))
        print(f"Python {version}: " + (f"MISSING {names}" if names else f"all {len(pins)} pins"))
    return 1 if any(missing.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
