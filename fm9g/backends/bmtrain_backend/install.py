"""Build and install BMTrain 1.0.1 from its PyPI sdist for the local GPU.

Why this exists: PyPI has BMTrain wheels only for CPython 3.7-3.11 (CUDA 11.3, sm_61..80), and its
sdist's ``CMakeLists.txt`` hard-codes ``compute_61/62/70/72`` which CUDA 13's nvcc rejects. The one
patch applied here replaces that architecture list (``CMAKE_CUDA_ARCHITECTURES`` and the explicit
``-gencode`` flags) with the architectures of the local GPU (or ``--arch``); nothing else in the
source changes. The wheel's metadata asks for ``nvidia-nccl-cu11``; it is installed ``--no-deps`` so
that torch's own NCCL is not replaced (BMTrain then uses the NCCL that torch ships).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from fm9g.core.errors import Fm9gError

BMTRAIN_VERSION = "1.0.1"


def find_nvcc() -> str:
    candidates = [shutil.which("nvcc")]
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            candidates.append(str(Path(root) / "bin" / "nvcc"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    raise Fm9gError(
        "nvcc (the CUDA compiler) was not found",
        where="PATH, $CUDA_HOME/bin, /usr/local/cuda/bin",
        fix="install the CUDA toolkit matching your torch build, or set CUDA_HOME",
    )


def local_architectures() -> list[str]:
    """Compute capabilities of the visible GPUs as CMake architecture numbers, e.g. ``["90"]``."""
    import torch

    if not torch.cuda.is_available():
        raise Fm9gError(
            "no CUDA GPU is visible to torch, so the target architecture is unknown",
            fix="run on the GPU machine, or pass --arch (e.g. --arch 90 for H100/H200, 80 for A100)",
        )
    capabilities = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    return sorted(f"{major}{minor}" for major, minor in capabilities)


def patch_cmakelists(text: str, architectures: list[str]) -> str:
    """Point both of CMakeLists' architecture settings at ``architectures`` (e.g. ``["80", "90"]``)."""
    arch_list = ";".join(architectures)
    gencode = " ".join(f"-gencode=arch=compute_{a},code=sm_{a}" for a in architectures)
    patched, n_arch = re.subn(
        r'set\(CMAKE_CUDA_ARCHITECTURES "[^"]*"\)', f'set(CMAKE_CUDA_ARCHITECTURES "{arch_list}")', text
    )
    patched, n_gencode = re.subn(
        r'(set\(CMAKE_CUDA_FLAGS "\$\{CMAKE_CUDA_FLAGS\}) (-gencode=arch=compute_61[^"]*)"\)',
        lambda m: f'{m.group(1)} {gencode}")', patched
    )
    patched, _ = re.subn(
        r'(set_target_properties\([^)]*CUDA_ARCHITECTURES\s+)"?[0-9;]+"?', rf'\g<1>"{arch_list}"', patched
    )
    if n_arch != 1 or n_gencode != 1:
        raise Fm9gError(
            "BMTrain's CMakeLists.txt does not have the expected architecture lines",
            where="CMakeLists.txt of the sdist",
            fix=f"use the BMTrain {BMTRAIN_VERSION} sdist from PyPI (--sdist PATH)",
        )
    return patched


def download_sdist(directory: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--no-build-isolation", f"bmtrain=={BMTRAIN_VERSION}", "-d", str(directory)]
    result = subprocess.run(command, capture_output=True, text=True)
    sdists = list(directory.glob("bmtrain-*.tar.gz"))
    if result.returncode != 0 or not sdists:
        raise Fm9gError(
            f"could not download the BMTrain {BMTRAIN_VERSION} sdist: {result.stderr.strip()[-300:]}",
            fix="download bmtrain-1.0.1.tar.gz elsewhere and pass --sdist PATH",
        )
    return sdists[0]


def build_and_install(sdist: Path | None, architectures: list[str] | None, *, install: bool = True,
                      wheel_dir: Path | None = None, log=print) -> Path:
    """Patch, build a wheel and (optionally) install it; returns the wheel's file name."""
    if not install and wheel_dir is None:
        raise Fm9gError("nothing to do: --no-install needs --wheel-dir to keep the wheel")
    find_nvcc()
    architectures = architectures or local_architectures()
    with tempfile.TemporaryDirectory(prefix="fm9g-bmtrain-") as tmp:
        tmp_path = Path(tmp)
        sdist = Path(sdist) if sdist else download_sdist(tmp_path)
        if not sdist.is_file():
            raise Fm9gError("sdist not found", where=str(sdist), fix="check the --sdist path")
        with tarfile.open(sdist) as archive:
            archive.extractall(tmp_path / "src", filter="data")
        source = next((tmp_path / "src").iterdir())
        cmakelists = source / "CMakeLists.txt"
        cmakelists.write_text(patch_cmakelists(cmakelists.read_text(), architectures))
        log(f"building BMTrain {BMTRAIN_VERSION} for sm_{', sm_'.join(architectures)} ...")
        out_dir = Path(wheel_dir or tmp_path / "wheels")
        out_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, BUILD_DOCKER_ENV="1")
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", ".", "-w", str(out_dir)],
            cwd=source, env=env, capture_output=True, text=True,
        )
        if build.returncode != 0:
            raise Fm9gError(
                f"building BMTrain failed: {(build.stdout + build.stderr).strip()[-800:]}",
                fix="needs cmake, pybind11, a C++ compiler and NCCL headers (torch's nvidia-nccl package provides them)",
            )
        wheel = next(out_dir.glob("bmtrain-*.whl"))
        if install:
            subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(wheel)],
                           check=True, capture_output=True)
            check = subprocess.run([sys.executable, "-c", "import bmtrain, sys; print(bmtrain.__file__)"],
                                   capture_output=True, text=True)
            if check.returncode != 0:
                raise Fm9gError(f"BMTrain installed but does not import: {check.stderr.strip()[-400:]}")
            log(f"installed {wheel.name}")
        return Path(wheel.name)
