"""A real plugin distribution, pip-installed into a temporary site directory, seen and used by fm9g.

Each test runs fm9g in a subprocess whose PYTHONPATH holds that site directory, exactly as a user's
``pip install fm9g-<name>`` would make the entry points visible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PLUGIN_MODULE = '''
"""A throwaway fm9g plugin: a transform and an adapter."""

import fm9g
from fm9g.core.protocols import Skipped


class Shout:
    name = "shout"
    description = "upper-case the output (test plugin)"
    options_schema = {"type": "object", "properties": {"suffix": {"type": "string", "default": "!"}},
                      "additionalProperties": False}

    def bind(self, options):
        suffix = options["suffix"]

        def transform(record, num_sample, rng):
            return {**record, "output": record["output"].upper() + suffix}

        return transform


class PipeLines:
    name = "pipe-lines"
    description = "'question|answer' text lines (test plugin)"
    options_schema = {"type": "object", "additionalProperties": False}
    input_kind = "text"

    def records(self, items, options):
        for line in items:
            if "|" not in line:
                yield Skipped("no-separator", line[:20])
                continue
            question, answer = line.split("|", 1)
            yield {"input": question, "output": answer}


@fm9g.hookimpl
def register_transforms(register):
    register(Shout())


@fm9g.hookimpl
def register_adapters(register):
    register(PipeLines())
'''

CLASHING_MODULE = '''
import fm9g


class Identity:
    name = "identity"
    description = "clashes with the built-in identity transform"
    options_schema = {"type": "object"}

    def bind(self, options):
        return lambda record, num_sample, rng: record


@fm9g.hookimpl
def register_transforms(register):
    register(Identity())
'''

BROKEN_MODULE = "import fm9g_no_such_dependency  # noqa: F401\n"

CRASHING_MODULE = '''
import fm9g


@fm9g.hookimpl
def register_adapters(register):
    raise RuntimeError("adapter table is corrupt")
'''


def build_distribution(root: Path, distribution: str, package: str, version: str, module_source: str) -> Path:
    """Write a minimal setuptools project whose ``fm9g`` entry point is ``package``."""
    project = root / distribution
    (project / package).mkdir(parents=True)
    (project / package / "__init__.py").write_text(module_source, encoding="utf-8")
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{distribution}"
        version = "{version}"
        dependencies = ["fm9g"]

        [project.entry-points.fm9g]
        {distribution} = "{package}"

        [tool.setuptools]
        packages = ["{package}"]
    """), encoding="utf-8")
    return project


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory, pip_install) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("plugin-dists")
    good, clashing = root / "site-good", root / "site-clash"
    pip_install(build_distribution(root, "fm9g-shout", "fm9g_shout", "1.2.3", PLUGIN_MODULE), good)
    pip_install(build_distribution(root, "fm9g-clash", "fm9g_clash", "0.0.1", CLASHING_MODULE), clashing)
    broken, crashing = root / "site-broken", root / "site-crash"
    pip_install(build_distribution(root, "fm9g-broken", "fm9g_broken", "0.3.0", BROKEN_MODULE), broken)
    pip_install(build_distribution(root, "fm9g-crash", "fm9g_crash", "0.4.0", CRASHING_MODULE), crashing)
    return {"good": good, "clash": clashing, "broken": broken, "crash": crashing}


def run_fm9g(site: Path, *args: str, disable: bool = False, code: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.pop("FM9G_DISABLE_PLUGINS", None)
    if disable:
        env["FM9G_DISABLE_PLUGINS"] = "1"
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "fm9g", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def test_installed_plugin_is_listed_with_version_and_distribution(sites: dict[str, Path]) -> None:
    result = run_fm9g(sites["good"], "plugins", "--json")
    assert result.returncode == 0, result.stderr
    listed = {(entry["kind"], entry["name"]): entry for entry in json.loads(result.stdout)}
    assert listed["transform", "shout"] == {
        "name": "shout", "kind": "transform", "version": "1.2.3", "distribution": "fm9g-shout",
        "description": "upper-case the output (test plugin)",
    }
    assert listed["adapter", "pipe-lines"]["distribution"] == "fm9g-shout"
    assert listed["transform", "identity"]["distribution"] == "fm9g"

    table = run_fm9g(sites["good"], "plugins", "--kind", "transform")
    assert table.returncode == 0 and "shout" in table.stdout and "fm9g-shout" in table.stdout
    assert "pipe-lines" not in table.stdout


PROBE = textwrap.dedent("""
    import json, random
    from fm9g.core.errors import UnknownName, ValidationFailed
    from fm9g.core.plugins import get_plugin, registry, validate_options

    shout = registry().get("transform", "shout")
    transform = shout.bind(validate_options(shout, {"suffix": "?"}, where="test"))
    adapter = registry().get("adapter", "pipe-lines")
    records = [r if isinstance(r, dict) else r.reason for r in adapter.records(["hi|there", "broken"], {})]
    try:
        validate_options(shout, {"sufix": "?"}, where="mix.json $.datasets[0]")
    except ValidationFailed as error:
        bad_options = str(error)
    try:
        get_plugin("transform", "shuot", where="mix.json: $.datasets[0].transform")
    except UnknownName as error:
        unknown = str(error)
    print(json.dumps({"transformed": transform({"input": "q", "output": "abc"}, 0, random.Random(0)),
                      "records": records, "bad_options": bad_options, "unknown": unknown}))
""")


@pytest.fixture(scope="module")
def probe(sites: dict[str, Path]) -> dict:
    """What a Python program sees of the installed plugin (one subprocess for several tests)."""
    result = run_fm9g(sites["good"], code=PROBE)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_installed_plugin_is_usable(probe: dict) -> None:
    assert probe["transformed"] == {"input": "q", "output": "ABC?"}
    assert probe["records"] == [{"input": "hi", "output": "there"}, "no-separator"]


def test_plugin_options_are_validated(probe: dict) -> None:
    assert probe["bad_options"] == ("mix.json $.datasets[0] (shout): options.sufix: unknown option "
                                    "(did you mean 'suffix'? known: suffix)")


def test_unknown_name_suggests_the_installed_one(probe: dict) -> None:
    message = probe["unknown"]
    assert message.startswith("mix.json: $.datasets[0].transform: unknown transform 'shuot'")
    assert "did you mean 'shout'?" in message and "identity" in message


def test_disable_plugins_hides_it(sites: dict[str, Path]) -> None:
    result = run_fm9g(sites["good"], "plugins", "--json", disable=True)
    assert result.returncode == 0, result.stderr
    names = {entry["name"] for entry in json.loads(result.stdout)}
    assert "shout" not in names and "pipe-lines" not in names
    assert {"identity", "byte", "txt"} <= names


def test_duplicate_names_are_an_error(sites: dict[str, Path]) -> None:
    result = run_fm9g(sites["clash"], "plugins", "--json")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "transform 'identity' is registered twice" in lines[0]
    assert "fm9g-clash" in lines[0] and "FM9G_DISABLE_PLUGINS=1" in lines[0]
    assert run_fm9g(sites["clash"], "plugins", "--json", disable=True).returncode == 0


def test_plugin_that_fails_to_import_is_one_warning_and_blocks_nothing_else(sites: dict[str, Path]) -> None:
    result = run_fm9g(sites["broken"], "plugins")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("fm9g: warning: ")
    assert "plugin distribution fm9g-broken 0.3.0 failed to load: ModuleNotFoundError" in line
    assert "entry point fm9g-broken = fm9g_broken" in line and "FM9G_DISABLE_PLUGINS=1" in line
    assert "txt" in result.stdout and "chatml" in result.stdout  # everything else is there
    asked = run_fm9g(sites["broken"], "prepare", "--adapter", "broken-format", "--input", "x.json", "--output", "o")
    assert asked.returncode == 2 and "unknown adapter 'broken-format'" in asked.stderr
    assert "not loaded: plugin distribution fm9g-broken 0.3.0 failed to load" in asked.stderr
    assert run_fm9g(sites["broken"], "plugins", disable=True).stderr == ""


def test_plugin_hook_that_raises_is_one_warning(sites: dict[str, Path]) -> None:
    result = run_fm9g(sites["crash"], "plugins", "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert json.loads(result.stdout)  # the other plugins are listed
    assert "failed in register_adapters: RuntimeError: adapter table is corrupt" in result.stderr
    assert "distribution fm9g-crash 0.4.0" in result.stderr
