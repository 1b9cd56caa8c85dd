"""The CLI starts on Python 3.10, where the standard library has no ``tomllib``.

On 3.10 ``jacfree.cli`` falls back to the ``tomli`` package (a dependency there). The test runs a
fresh interpreter in which ``import tomllib`` fails, as on 3.10, and ``tomli`` is the same parser
under its package name, then reads a config file through the CLI's loader.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


@pytest.mark.slow
def test_cli_imports_and_reads_a_config_without_tomllib(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('data = "moons"\nepochs = 3\n')
    script = textwrap.dedent(
        f"""
        import sys
        import tomllib as parser
        sys.modules["tomli"] = parser      # the package that Python 3.10 installs
        sys.modules["tomllib"] = None      # `import tomllib` now raises ModuleNotFoundError
        del parser
        try:
            import tomllib
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("tomllib is not hidden")
        import jacfree.cli as cli
        assert cli.tomllib is sys.modules["tomli"], cli.tomllib
        import jacfree.data.registry as registry
        assert registry.tomllib is sys.modules["tomli"] and registry.read_catalogue()["moons"]
        argv = cli._expand_config(["train", "--config", {str(config)!r}])
        print(argv)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "--epochs" in out.stdout and "moons" in out.stdout
