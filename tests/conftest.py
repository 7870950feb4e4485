"""Shared pytest fixtures: the tiny benchmark corpus (built once per session) and its HF tokenizer.

``tests/`` goes on ``sys.path`` so that test modules of every stage can import ``cli_helpers``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

MAKE_CORPUS_DIR = Path(os.environ.get("FM9G_MAKE_CORPUS_DIR")
                       or Path(__file__).resolve().parents[2] / "shared" / "bench")
"""Where ``make_corpus.py`` lives: ``../shared/bench`` beside the checkout (as on CI), or $FM9G_MAKE_CORPUS_DIR."""


def _make_corpus_module():
    """Import ``make_corpus`` from the shared bench directory, or skip when it is not on this machine."""
    if not (MAKE_CORPUS_DIR / "make_corpus.py").is_file():
        pytest.skip(f"make_corpus.py not found in {MAKE_CORPUS_DIR}")
    if str(MAKE_CORPUS_DIR) not in sys.path:
        sys.path.insert(0, str(MAKE_CORPUS_DIR))
    import make_corpus

    return make_corpus


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the ``tiny`` make_corpus output (seed 0): pretrain.txt, alpaca_zh.json,
    medical_o1.json, tokenizer/ and manifest.json. Generated once per test session (~4 s)."""
    make_corpus = _make_corpus_module()
    out_dir = tmp_path_factory.mktemp("tiny_corpus")
    make_corpus.generate(out_dir, scale="tiny", seed=0, log=lambda *args, **kwargs: None)
    return out_dir


@pytest.fixture(scope="session")
def hf_tokenizer_dir(tiny_corpus: Path) -> Path:
    """The tiny corpus's HF tokenizer directory (byte-level BPE, vocab 4000, ``<s>``=0 ``</s>``=1
    ``<unk>``=2 ``<pad>``=3)."""
    return tiny_corpus / "tokenizer"


def _pip_install_offline(project: Path, site: Path) -> None:
    """Really ``pip install`` a plugin project into ``site`` (``--target``), offline and without its
    dependencies, as ``pip install fm9g-<name>`` would make its entry points visible."""
    import subprocess

    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
               "--no-index", "--disable-pip-version-check", "--target", str(site), str(project)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=project.parent, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="session")
def pip_install():
    """``pip_install(project_dir, site_dir)``: a real offline pip install of a plugin project."""
    return _pip_install_offline
