#!/usr/bin/env python3
"""Fails when an integration test file would run none of its tests.

Every `tests/*.rs` of a workspace crate uses the test kit's harness, so it
needs a `[[test]]` entry with `harness = false` in its crate's Cargo.toml.
Without one, cargo builds the file with libtest's harness, which ignores the
kit's `main!()` and runs nothing (the kit's guard test then fails at run
time; this check fails before anything is built). `make lint` runs it.
"""
import pathlib
import sys
import tomllib

root = pathlib.Path(__file__).resolve().parent.parent
workspace = tomllib.loads((root / "Cargo.toml").read_text())["workspace"]
problems = []
checked = 0
for member in workspace["members"]:
    crate = root / member
    manifest = tomllib.loads((crate / "Cargo.toml").read_text())
    entries = {t["name"]: t for t in manifest.get("test", [])}
    for path in sorted((crate / "tests").glob("*.rs")):
        checked += 1
        rel = path.relative_to(root)
        entry = entries.pop(path.stem, None)
        if entry is None:
            problems.append(f"{rel}: no [[test]] name = \"{path.stem}\" in {member}/Cargo.toml")
        elif entry.get("harness", True):
            problems.append(f"{rel}: its [[test]] entry lacks harness = false")
    for name, entry in entries.items():
        if "path" not in entry and not (crate / "tests" / f"{name}.rs").exists():
            problems.append(f"{member}/Cargo.toml: [[test]] {name} has no tests/{name}.rs")

for p in problems:
    print(f"check-tests: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"check-tests: {checked} test files, each with its [[test]] harness = false entry")
