"""The project's images, built by tools/build-images.sh (the same script as `make images`; a no-op when nothing
changed). Tests that use the `images` fixture are marked `images`. GPTOPS_SKIP_IMAGES=1 skips them; so does a machine where docker cannot be
installed or started (not root, no apt-get), with the script's reason. A failed build fails them."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP_ENV = "GPTOPS_SKIP_IMAGES"
#: tools/build-images.sh exits with this when docker or debootstrap cannot be installed or started here.
CANNOT_INSTALL = 2


@dataclass(frozen=True)
class Images:
    docker: str
    base: str
    operator: str
    trainer: str

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """`docker run --rm ...`; the caller checks the exit code."""
        return subprocess.run([self.docker, "run", "--rm", *args], capture_output=True, text=True, timeout=timeout)


def pytest_collection_modifyitems(items):
    for item in items:
        if "images" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.images)


@pytest.fixture(scope="session")
def images() -> Images:
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: not building or running the images")
    # The build takes minutes cold (the trainer's torch), seconds warm.
    result = subprocess.run([str(ROOT / "tools" / "build-images.sh")], capture_output=True, text=True, timeout=3600)
    if result.returncode == CANNOT_INSTALL:
        pytest.skip(f"docker cannot be installed or started here: {result.stderr.strip().splitlines()[-1]}")
    if result.returncode != 0:
        pytest.fail(f"tools/build-images.sh exited {result.returncode}:\n{result.stderr[-4000:]}", pytrace=False)
    base, operator, trainer = result.stdout.split()[-3:]
    docker = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker") or "docker"
    return Images(docker, base, operator, trainer)
