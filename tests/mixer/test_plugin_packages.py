"""Plugin packages, really pip-installed (offline, --no-deps, into a temporary --target directory)
and used by name through real ``fm9g`` subprocesses: a transform package written here, and the
documented example package ``examples/plugin-example`` (adapter + transform) from docs/plugins.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mixer_helpers import numbered_records, write_manifest, write_seed_dataset

EXAMPLE_PACKAGE = Path(__file__).resolve().parents[2] / "examples" / "plugin-example"
pytestmark = pytest.mark.slow

REVERSE_MODULE = '''
"""A transform plugin: the output reversed, with an optional marker."""

import fm9g


class Reverse:
    name = "reverse-output"
    description = "reverse the output text (test plugin)"
    options_schema = {"type": "object", "properties": {"marker": {"type": "string", "default": "#"}},
                      "additionalProperties": False}

    def bind(self, options):
        marker = options["marker"]
        return lambda record, num_sample, rng: {"input": record.get("input", ""),
                                                "output": marker + record["output"][::-1]}


@fm9g.hookimpl
def register_transforms(register):
    register(Reverse())
'''


def fm9g(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.pop("FM9G_DISABLE_PLUGINS", None)
    return subprocess.run([sys.executable, "-m", "fm9g", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_pip_installed_transform_package_is_used_by_name(tmp_path, pip_install):
    project = tmp_path / "fm9g-reverse"
    (project / "fm9g_reverse").mkdir(parents=True)
    (project / "fm9g_reverse" / "__init__.py").write_text(REVERSE_MODULE)
    (project / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "fm9g-reverse"
        version = "2.0.0"
        dependencies = ["fm9g"]

        [project.entry-points.fm9g]
        fm9g-reverse = "fm9g_reverse"

        [tool.setuptools]
        packages = ["fm9g_reverse"]
    """))
    site = tmp_path / "site"
    pip_install(project, site)
    write_seed_dataset(tmp_path / "idx" / "a", numbered_records("a", 20, prompt=False))
    write_manifest(tmp_path / "mix.json", [{"task_name": "a", "path": "idx/a", "abs_weight": 1, "allow_repeat": False,
                                            "transform": {"name": "reverse-output", "options": {"marker": "@"}}}],
                   max_length=128)
    result = fm9g(site, "mix", "--manifest", "mix.json", "--output", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    from fm9g.mixer.materialized import MaterializedStream

    stream = MaterializedStream(tmp_path / "out")
    texts = []
    for batch in stream:
        bounds = batch.cu_seqlens.tolist()
        texts += [stream.tokenizer.decode(batch.input_ids[b:e].tolist()) for b, e in zip(bounds[:-1], bounds[1:])
                  if batch.task_ids[b] >= 0]
    expected = {"@" + record["output"][::-1] for record in numbered_records("a", 20, prompt=False)}
    assert set(texts) == expected
    without = subprocess.run([sys.executable, "-m", "fm9g", "mix", "--manifest", "mix.json"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert without.returncode == 2 and "unknown transform 'reverse-output'" in without.stderr


def test_the_documented_example_package_installs_and_runs(tmp_path, pip_install):
    project = tmp_path / "plugin-example"
    shutil.copytree(EXAMPLE_PACKAGE, project, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp_path / "site"
    pip_install(project, site)
    listed = fm9g(site, "plugins", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    names = {(entry["kind"], entry["name"]): entry["distribution"] for entry in json.loads(listed.stdout)}
    assert names[("adapter", "tsv-qa")] == names[("transform", "llama2-chat")] == "fm9g-plugin-example"
    (tmp_path / "qa.tsv").write_text("".join(f"What is {i} + {i}?\t{2 * i}\n" for i in range(40)) + "no tab here\n")
    steps = [
        ("prepare", "--adapter", "tsv-qa", "--input", "qa.tsv", "--output", "prepared"),
        ("index", "--input", "prepared/train.jsonl", "--output", "idx/qa", "--tokenizer", "byte", "--workers", "1"),
    ]
    for step in steps:
        result = fm9g(site, *step, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    write_manifest(tmp_path / "mix.json", [{"task_name": "qa", "path": "idx/qa", "abs_weight": 1, "allow_repeat": False,
                                            "transform": {"name": "llama2-chat", "options": {"system": "Add."}}}],
                   max_length=256)
    result = fm9g(site, "mix", "--manifest", "mix.json", "--preview", "1", "--report", "r.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[prompt] [INST] <<SYS>>\nAdd.\n<</SYS>>\n\nWhat is" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["samples"] == 40 and report["datasets"][0]["left_reason"] == "exhausted"
    assert np.isclose(report["datasets"][0]["realized_share"], 1.0)
