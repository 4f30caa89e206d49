"""Checks and cuts the dependency lock (requirements/lock.txt) against pyproject.toml.

    python requirements/lockfile.py check                      # exit 1 when pyproject.toml and the lock disagree
    python requirements/lockfile.py subset --extras postgres,redis,s3,onnx -o requirements/service.txt
    python requirements/lockfile.py drop torch < requirements/service.txt > no-torch.txt

`check` and `subset` read the dependency graph from the installed distributions (the environment that `make install`
built from the lock), so they need no network and no resolver: the lock says which versions, the installed metadata
says who needs whom. `drop` is plain text work and runs anywhere (the Docker images use it before torch is installed).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "lock.txt"
PYPROJECT = REPO / "pyproject.toml"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def canonicalize_name(name: str) -> str:
    """PEP 503's normal form. Written here so that `drop` runs where `packaging` is not installed yet (Docker)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Entry:
    """One pinned package of a lock: its name, version and the lines (hashes, `# via`) that belong to it."""

    name: str
    version: str
    text: str


def parse_lock(text: str) -> tuple[str, dict[str, Entry]]:
    """The lock's header (comments before the first pin) and its entries by canonical name."""
    header: list[str] = []
    entries: dict[str, Entry] = {}
    current: tuple[str, str, list[str]] | None = None
    for line in text.splitlines(keepends=True):
        match = _PIN.match(line)
        if match:
            if current:
                entries[current[0]] = Entry(current[0], current[1], "".join(current[2]))
            current = (canonicalize_name(match.group(1)), match.group(2), [line])
        elif current and (line.startswith((" ", "\t")) or not line.strip()):
            current[2].append(line)
        elif current is None:
            header.append(line)
        else:  # a top-level comment after the pins (pip-compile's warnings): it closes the entry
            entries[current[0]] = Entry(current[0], current[1], "".join(current[2]))
            current = None
    if current:
        entries[current[0]] = Entry(current[0], current[1], "".join(current[2]))
    return "".join(header), entries


def project_requirements(extras: Iterable[str], pyproject: Path = PYPROJECT) -> tuple[str, list[Requirement]]:
    """The project's name and the requirements of its core set plus `extras` (self-referencing extras followed)."""
    from packaging.requirements import Requirement

    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    name = canonicalize_name(project["name"])
    optional = project.get("optional-dependencies", {})
    wanted, seen, out = list(extras), set(), [Requirement(r) for r in project["dependencies"]]
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for raw in optional.get(extra, []):
            requirement = Requirement(raw)
            if canonicalize_name(requirement.name) == name:
                wanted.extend(requirement.extras)
            else:
                out.append(requirement)
    return name, out


def _applies(requirement: Requirement, extras: Iterable[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in (list(extras) or [""]))


def closure(roots: Iterable[Requirement]) -> Iterator[tuple[str, Requirement]]:
    """Every (needed package, requirement asking for it) reachable from `roots` through installed metadata."""
    from packaging.requirements import Requirement

    queue = [req for req in roots if _applies(req, ())]
    visited: set[tuple[str, frozenset[str]]] = set()
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        yield name, requirement
        key = (name, frozenset(requirement.extras))
        if key in visited:
            continue
        visited.add(key)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # reported by `check` as not installed
        for raw in requires:
            child = Requirement(raw)
            if _applies(child, requirement.extras):
                queue.append(child)


def needed(extras: Iterable[str]) -> tuple[str, dict[str, list[Requirement]]]:
    project, roots = project_requirements(extras)
    graph: dict[str, list[Requirement]] = {}
    for name, requirement in closure(roots):
        graph.setdefault(name, []).append(requirement)
    graph.pop(project, None)
    return project, graph


def problems(lock: dict[str, Entry], extras: Iterable[str]) -> list[str]:
    """What makes the lock disagree with pyproject.toml (empty when they agree)."""
    from packaging.version import Version

    _, graph = needed(extras)
    found = []
    for name, requirements in sorted(graph.items()):
        entry = lock.get(name)
        if entry is None:
            found.append(f"{name} is needed ({requirements[0]}) but not in the lock")
            continue
        version = Version(entry.version)
        for requirement in requirements:
            if not requirement.specifier.contains(version, prereleases=True):
                found.append(f"{name}=={entry.version} in the lock does not satisfy {requirement}")
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            found.append(f"{name} is in the lock but not installed: run `make install`")
            continue
        if Version(installed) != version:
            found.append(f"{name} {installed} is installed but the lock pins {entry.version}: run `make install`")
    for name in sorted(set(lock) - set(graph)):
        found.append(f"{name}=={lock[name].version} is in the lock but nothing in pyproject.toml needs it")
    return found


def subset(text: str, extras: Iterable[str]) -> str:
    """The lock cut to what the core set plus `extras` needs: the same versions and hashes."""
    _, lock = parse_lock(text)
    _, graph = needed(extras)
    missing = sorted(set(graph) - set(lock))
    if missing:
        raise SystemExit(f"not in the lock: {', '.join(missing)}; run `make lock`")
    command = f"python requirements/lockfile.py subset --extras {','.join(extras)}"
    note = f"# Cut from requirements/lock.txt by `{command}`; install with --require-hashes.\n"
    return note + "".join(lock[name].text for name in sorted(graph))


def drop(text: str, names: Iterable[str]) -> str:
    header, lock = parse_lock(text)
    gone = {canonicalize_name(n) for n in names}
    return header + "".join(entry.text for name, entry in lock.items() if name not in gone)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python requirements/lockfile.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="exit 1 when pyproject.toml and the lock disagree")
    check.add_argument("--lock", type=Path, default=LOCK)
    check.add_argument("--extras", default="dev", help="comma-separated extras the lock covers")
    cut = commands.add_parser("subset", help="the lock cut to the core set plus some extras")
    cut.add_argument("--lock", type=Path, default=LOCK)
    cut.add_argument("--extras", default="", help="comma-separated extras")
    cut.add_argument("-o", "--output", type=Path, required=True)
    remove = commands.add_parser("drop", help="the lock on stdin without the named packages, on stdout")
    remove.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "drop":
        sys.stdout.write(drop(sys.stdin.read(), args.names))
        return 0
    extras = [e for e in args.extras.split(",") if e]
    if args.command == "subset":
        args.output.write_text(subset(args.lock.read_text(encoding="utf-8"), extras), encoding="utf-8")
        return 0
    found = problems(parse_lock(args.lock.read_text(encoding="utf-8"))[1], extras)
    for line in found:
        print(f"lock: {line}", file=sys.stderr)
    if not found:
        print(f"lock: {args.lock.name} agrees with pyproject.toml (extras: {', '.join(extras) or 'none'})")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
