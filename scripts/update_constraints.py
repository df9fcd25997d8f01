"""Write ``constraints.txt``: the exact versions of seg's installed dependency closure (``seg[dev,...]``).

CI (``.ci/run``) and the README's install commands pass ``-c constraints.txt`` so that a fresh machine installs
the versions the test suite was last verified with, not whatever the registry serves that day (pytest 9.2 once
broke ``pytest.approx`` on tensors between two runs of the same commit). Refresh after a verified upgrade:

    pip install -U -e ".[dev]" && python scripts/update_constraints.py "seg[dev]" && python -m pytest -q
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HEADER = """\
# Versions the test suite was last verified with (CPython 3.11, Linux x86_64), used by .ci/run and the README:
#   pip install -e ".[dev]" -c constraints.txt
# Regenerate with scripts/update_constraints.py after upgrading and re-running the tests.
"""


def closure(roots: list[str]) -> dict[str, str]:
    """{canonical name: installed version} of every distribution the requirements pull in, extras followed."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    versions: dict[str, str] = {}
    stack = [Requirement(r) for r in roots]
    while stack:
        req = stack.pop()
        key = (canonicalize_name(req.name), tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:  # not installed on this platform (e.g. an emscripten-only dep)
            continue
        versions[key[0]] = dist.version
        for spec in dist.requires or []:
            dep = Requirement(spec)
            envs = [{"extra": e} for e in (req.extras or {""})]
            if dep.marker is None or any(dep.marker.evaluate(env) for env in envs):
                stack.append(dep)
    return versions


def main(argv: list[str]) -> None:
    roots = argv or ["seg[dev]"]
    own = {canonicalize_name(Requirement(r).name) for r in roots}
    pins = {n: v for n, v in closure(roots).items() if n not in own}
    text = HEADER + "".join(f"{n}=={pins[n]}\n" for n in sorted(pins))
    Path(__file__).resolve().parents[1].joinpath("constraints.txt").write_text(text)
    print(f"constraints.txt: {len(pins)} pins")


if __name__ == "__main__":
    main(sys.argv[1:])
