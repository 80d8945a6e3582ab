#!/usr/bin/env python3
"""Copy a bench results file between the bench markers of a Markdown page
(docs/performance.md), verbatim.

Usage: readme_table.py RESULTS PAGE
"""
import sys

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def main() -> int:
    results_path, readme_path = sys.argv[1], sys.argv[2]
    results = open(results_path, encoding="utf-8").read().strip()
    readme = open(readme_path, encoding="utf-8").read()
    if START not in readme or END not in readme:
        print(f"{readme_path}: markers {START} / {END} not found", file=sys.stderr)
        return 1
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(readme_path, "w", encoding="utf-8") as f:
        f.write(f"{head}{START}\n{results}\n{END}{tail}")
    print(f"copied {results_path} into {readme_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
