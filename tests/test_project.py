"""The README documents what the code offers."""

from pathlib import Path

from citechat.settings import Settings


def test_every_setting_is_in_the_readme_table(repo_root: Path):
    readme = (repo_root / "README.md").read_text()
    for name, field in Settings.model_fields.items():
        aliases = getattr(field.validation_alias, "choices", None)
        variable = aliases[0] if aliases else f"CITECHAT_{name.upper()}"
        assert f"`{variable}`" in readme, name


def test_ci_runs_the_readme_test_command(repo_root: Path):
    assert "uv run pytest" in (repo_root / "README.md").read_text()
    assert (repo_root / ".ci" / "run").read_text().strip().endswith("uv run pytest")


def test_code_passes_ruff(repo_root: Path):
    import subprocess
    import sys

    ruff = [sys.executable, "-m", "ruff"]
    lint = subprocess.run([*ruff, "check", "."], cwd=repo_root, capture_output=True, text=True)  # noqa: S603
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run([*ruff, "format", "--check", "."], cwd=repo_root, capture_output=True, text=True)  # noqa: S603
    assert fmt.returncode == 0, fmt.stdout
