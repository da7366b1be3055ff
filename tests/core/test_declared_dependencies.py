"""What a connector imports is declared in the extra that installs it."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _extra(name: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {Requirement(item).name.lower() for item in project["optional-dependencies"][name]}


def test_salesforce_extra_declares_pyjwt_its_jwt_flow_imports():
    source = (ROOT / "connectors/crmsync_salesforce/_auth.py").read_text()
    assert "import jwt" in source
    assert "pyjwt" in _extra("salesforce")


def test_core_declares_python_dotenv_its_secrets_file_reader_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "python-dotenv" in {Requirement(item).name.lower() for item in project["dependencies"]}
