"""Packaging: one version, a LICENSE, py.typed shipped, the metadata PyPI shows."""
from importlib import metadata
from pathlib import Path

import pytest

import minivit

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_is_written_once():
    project = pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "minivit.__version__"}
    assert metadata.version("minivit") == minivit.__version__      # the installed metadata


def test_license_and_py_typed_are_shipped():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "minivit authors" in text
    project = pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "minivit" / "py.typed").is_file()
    assert "py.typed" in pyproject()["tool"]["setuptools"]["package-data"]["minivit"]


def test_metadata_authors_classifiers_keywords_and_extras():
    project = pyproject()["project"]
    assert project["authors"] == [{"name": "minivit authors"}]
    assert "Typing :: Typed" in project["classifiers"] and len(project["keywords"]) >= 5
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # SPDX instead
    extras = project["optional-dependencies"]
    assert any(r.startswith("safetensors") for r in extras["safetensors"])
    assert any(r.startswith("safetensors") for r in extras["test"])
