"""The committed constraints (constraints/*.txt, made by `make lock`) cover everything CI and
`make test` install, and every install step uses them (issue #36: a new upstream release broke
the Label Studio server through a package nobody pinned)."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints"


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (CONSTRAINTS / f"{name}.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier  # exactly one `==` each
            assert spec.operator == "==", f"{name}.txt: {line} is not pinned with =="
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def _requirements(path: Path) -> list[Requirement]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [Requirement(line) for line in lines if line and not line.startswith((".", "-"))]


def _assert_pinned_within(reqs: list[Requirement], pins: dict[str, str], where: str) -> None:
    missing = [str(r) for r in reqs if canonicalize_name(r.name) not in pins]
    assert not missing, f"{where}: not in the constraints (run `make lock`): {missing}"
    outside = [
        f"{r} (pinned {pins[canonicalize_name(r.name)]})"
        for r in reqs
        if not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)
    ]
    assert not outside, f"{where}: pinned outside its range (run `make lock`): {outside}"


def test_every_package_the_project_and_its_extras_name_is_pinned_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for names in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in names]
    assert len(reqs) > 20
    _assert_pinned_within(reqs, _pins("project"), "pyproject.toml")


def test_every_input_of_every_environment_is_pinned_within_its_range():
    ins = sorted(CONSTRAINTS.glob("*.in"))
    assert {p.stem for p in ins} == {"project", "label-studio", "embedded"}
    for source in ins:
        _assert_pinned_within(_requirements(source), _pins(source.stem), f"constraints/{source.name}")
    assert _pins("project")["torch"] == "2.13.0" and "llama-cpp-python" in _pins("project")
    assert int(_pins("label-studio")["sentry-sdk"].split(".")[0]) < 3  # label-studio 1.23.2 dies with 3.x


def test_every_install_step_of_make_and_ci_installs_under_the_constraints():
    """Each `pip install` in the Makefile and .ci/ either reads constraints/ (-c or -r) or installs
    the wheel just built with --no-deps."""
    steps = []
    for path in [ROOT / "Makefile", *sorted((ROOT / ".ci").iterdir())]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split(" #")[0]
            if re.search(r"pip\"? install", code) and not code.lstrip().startswith(("#", "print(", "echo")):
                steps.append((f"{path.name}:{number}", code))
    assert len(steps) >= 5
    loose = [
        where
        for where, code in steps
        if not re.search(r"-[cr] constraints/", code) and not ("--no-deps" in code and '"$wheel"' in code)
    ]
    assert not loose, f"installs not under constraints/*.txt: {loose}"
