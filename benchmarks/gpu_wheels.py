"""Prepares .whl/ for `benchmarks/gpu-check.sh` on a lent GPU machine.

That machine has Python 3.12 with PyTorch, Lightning and ONNX Runtime, but neither Ray nor
MLflow, and no package index; what it lacks travels with the working tree, which may hold
64 MiB in all. So this downloads the missing wheels for CPython 3.12 and drops the parts of Ray
and MLflow that training and tracking never load (Ray's Java jar, dashboard web client, RLlib,
Serve and LLM packages; MLflow's web UI).

    python3 benchmarks/gpu_wheels.py && bash benchmarks/gpu-check.sh   # the latter there
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".whl"

# What the GPU image lacked on 2026-11-27, at the versions of constraints.txt.
PACKAGES = """
alembic annotated-types blinker cachetools cffi cryptography databricks-sdk docker fastapi
flask flask-cors gitdb gitpython google-auth graphene graphql-core graphql-relay gunicorn huey
importlib-metadata itsdangerous jsonschema jsonschema-specifications mako mlflow mlflow-skinny
mlflow-tracing opentelemetry-api opentelemetry-proto opentelemetry-sdk
opentelemetry-semantic-conventions prettytable pyasn1 pyasn1-modules pycparser pydantic
pydantic-core python-dotenv ray referencing rpds-py skops smmap sqlalchemy sqlparse starlette
tensorboardx typing-inspection uvicorn wcwidth
""".split()  # noqa: SIM905 - a word list reads best as words

UNUSED = {
    "ray": ("ray/jars/", "ray/dashboard/client/build/", "ray/rllib/", "ray/serve/", "ray/llm/"),
    "mlflow": ("mlflow/server/js/",),
}


def pinned() -> list[str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, ver = line.split("==", 1)
            pins[name.lower().replace("_", "-")] = ver.strip()
    return [f"{p}=={pins[p]}" for p in PACKAGES]


def strip(wheel: Path, prefixes: tuple[str, ...]) -> None:
    """Rewrite `wheel` without the files under `prefixes` (and their RECORD lines)."""
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            if item.filename.startswith(prefixes):
                continue
            data = zin.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                keep = [ln for ln in data.split(b"\n") if not ln.decode().startswith(prefixes)]
                data = b"\n".join(keep)
            zout.writestr(item, data)
    tmp.replace(wheel)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    platforms = ["manylinux2014_x86_64"] + [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 34)]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
               "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
               "-d", str(OUT)]  # fmt: skip
    for platform in platforms:
        command += ["--platform", platform]
    subprocess.run([*command, *pinned()], check=True)
    for wheel in OUT.glob("*.whl"):
        name = wheel.name.split("-")[0]
        if name in UNUSED:
            strip(wheel, UNUSED[name])
    total = sum(w.stat().st_size for w in OUT.glob("*.whl"))
    print(f"{len(list(OUT.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB in {OUT}")


if __name__ == "__main__":
    main()
