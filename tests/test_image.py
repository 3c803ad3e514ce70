"""The built image (deploy/docker/Dockerfile, `make image`) holds no machine's configuration:
its history and config name none of this machine's pip settings and no credentials, and its
files hold no pip configuration, no CA certificate of this machine's own, no `.env` and no
store or run from the checkout.

Slow (it builds the image, or reuses `make image`'s layers): run only with PLEXA_IMAGE_TESTS=1
(scripts/check-image sets it, and PLEXA_IMAGE_BUILT=1 after building), with docker (a daemon)
or buildah (root: the image's files are read from a buildah mount).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

IMAGE = os.environ.get("IMAGE", "plexa:cpu")
SMALL = 1 << 20  # files up to this size are searched for text
CREDENTIALS = re.compile(rb"[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]+@", re.I)
PIP_CONFIG_FILES = (
    "etc/pip.conf",
    "etc/xdg/pip/pip.conf",
    "root/.pip/pip.conf",
    "root/.config/pip/pip.conf",
    "home/plexa/.config/pip/pip.conf",
    "home/plexa/.pip/pip.conf",
    "opt/plexa/pip.conf",
    "run/secrets/pipconf",
    "run/secrets/pipcert",
)


def _docker() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def _tool() -> str | None:
    if _docker():
        return "docker"
    if shutil.which("buildah"):
        return "buildah"
    return None


TOOL = _tool() if os.environ.get("PLEXA_IMAGE_TESTS") else None
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("PLEXA_IMAGE_TESTS"),
        reason="builds the image (minutes): set PLEXA_IMAGE_TESTS=1 (scripts/check-image does)",
    ),
    pytest.mark.skipif(
        bool(os.environ.get("PLEXA_IMAGE_TESTS")) and TOOL is None,
        reason="neither a Docker daemon nor buildah on this machine",
    ),
]


def _run(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"
    return done.stdout


def _machine_pip_values() -> set[str]:
    """This machine's pip settings (indexes, find-links, constraints) as written in its
    configuration files and environment: none may appear in the image."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    values: set[str] = set()
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if key.rsplit(".", 1)[-1] in {"index-url", "extra-index-url", "find-links", "constraint"}:
            values.update(value.strip("'\"").split())
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONSTRAINT"):
        values.update(os.environ.get(name, "").split())
    # pypi.org is everyone's index: naming it leaks nothing
    return {value for value in values if "pypi.org" not in value and len(value) > 4}


def _machine_ca_certificates() -> set[bytes]:
    """A line from the body of each CA certificate this machine adds to Debian's bundle (the
    build's pipcert secret carries them): none may appear in the image."""
    found = set()
    for path in Path("/usr/local/share/ca-certificates").rglob("*.crt"):
        body = [
            line.strip()
            for line in path.read_bytes().splitlines()
            if line.strip() and not line.startswith(b"-----")
        ]
        if len(body) > 2:
            found.add(body[len(body) // 2])
    return found


@pytest.fixture(scope="module")
def image() -> str:
    if not os.environ.get("PLEXA_IMAGE_BUILT"):
        subprocess.run(
            [str(REPO / "scripts" / "build-image")],
            cwd=REPO, env={**os.environ, "IMAGE": IMAGE}, check=True, timeout=3600,
        )  # fmt: skip
    return IMAGE


@pytest.fixture(scope="module")
def metadata(image: str) -> tuple[str, str]:
    """The image's history (every layer's command, the build arguments included) and config,
    as text, and the user it runs as."""
    if TOOL == "docker":
        history = _run("docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image)
        config = _run("docker", "image", "inspect", image)
        return history + config, json.loads(config)[0]["Config"]["User"]
    config = _run("buildah", "inspect", "--type", "image", image)
    return config, json.loads(config)["OCIv1"]["config"].get("User", "")


def _walk(root: Path) -> Iterator[tuple[str, bytes | None]]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
        for name in files:
            path = Path(folder) / name
            relative = str(path.relative_to(root))
            if path.is_symlink() or not path.is_file():
                yield relative, None
            else:
                yield relative, path.read_bytes() if path.stat().st_size <= SMALL else None


def _exported(image: str) -> Iterator[tuple[str, bytes | None]]:
    container = _run("docker", "create", image).strip()
    try:
        export = subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE)
        assert export.stdout is not None
        with tarfile.open(fileobj=export.stdout, mode="r|") as tar:
            for member in tar:
                content = None
                if member.isfile() and member.size <= SMALL:
                    extracted = tar.extractfile(member)
                    content = extracted.read() if extracted else None
                yield member.name.lstrip("./"), content
        assert export.wait() == 0
    finally:
        _run("docker", "rm", "-f", container)


@pytest.fixture(scope="module")
def files(image: str) -> list[tuple[str, bytes | None]]:
    """Every file of the image's root: (path without the leading /, its bytes when small)."""
    if TOOL == "docker":
        return list(_exported(image))
    if os.geteuid() != 0:
        pytest.skip("reading a buildah image's files needs root (buildah mount)")
    container = _run("buildah", "from", "--pull-never", image).strip()
    try:
        root = Path(_run("buildah", "mount", container).strip())
        return list(_walk(root))
    finally:
        subprocess.run(["buildah", "umount", container], capture_output=True)
        _run("buildah", "rm", container)


def test_history_and_config_name_no_pip_setting_or_credentials(metadata: tuple[str, str]) -> None:
    metadata_text = metadata[0]
    values = _machine_pip_values()
    leaked = sorted(value for value in values if value in metadata_text)
    assert not leaked, f"the image's history or config names this machine's pip settings: {leaked}"
    assert not CREDENTIALS.search(metadata_text.encode()), "a URL with credentials in the history"
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CERT"):
        assert f'"{name}=' not in metadata_text, f"{name} is set in the image's config"


def test_files_hold_no_pip_configuration_certificate_or_env(
    files: list[tuple[str, bytes | None]],
) -> None:
    paths = {path for path, _ in files}
    assert len(paths) > 10_000, "the image's files were not read"
    assert "opt/plexa/bin/plexa" in paths
    present = sorted(set(PIP_CONFIG_FILES) & paths)
    assert not present, f"pip configuration in the image: {present}"
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        assert not (name == ".env" or name.startswith(".env.")), f"an env file: /{path}"
        top = path.split("/")[:2]
        assert top[0] != "app" or top[1] == "pipelines", f"more than pipelines in /app: /{path}"
    ours = [f"/{path}/" for path in paths if path.startswith(("app/", "src/", "data/"))]
    for store in ("mlflow.db", "mlruns", "plexa-runs", ".venv", ".git"):
        assert not any(f"/{store}/" in path for path in ours), f"{store} in the image"

    values = [value.encode() for value in _machine_pip_values()]
    certificates = _machine_ca_certificates()
    for path, content in files:
        if content is None:
            continue
        for value in values:
            assert value not in content, f"/{path} names this machine's pip setting {value!r}"
        for line in certificates:
            assert line not in content, f"/{path} holds a CA certificate of this machine's own"


def test_the_image_runs_as_an_unprivileged_user(metadata: tuple[str, str]) -> None:
    user = metadata[1]
    assert user and user.split(":")[0] not in {"root", "0"}, user
