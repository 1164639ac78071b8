"""The prompt templates: the shipped set is valid, and every mistake a prompt engineer can make is named."""

import os
import shutil
from pathlib import Path

import pytest

from citechat.pipeline.modes import POLICIES, ResponseMode
from citechat.pipeline.prompts import TEMPLATES, PromptError, PromptStore, load


@pytest.fixture
def prompts_dir(repo_root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "prompts"
    shutil.copytree(repo_root / "prompts", copy)
    return copy


def test_shipped_templates_are_valid(repo_root: Path):
    prompts = load(repo_root / "prompts")
    assert set(prompts.texts) == set(TEMPLATES)
    assert len(prompts.version) == 12
    for mode in ResponseMode:
        assert prompts.system(mode).startswith("\n")  # the sources are put directly before it
    assert "{context_str}" in prompts.context
    assert prompts.strict_refusal.endswith(".")


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("context.txt", "Sources: {context}\n", "unknown variable {context}"),
        ("context.txt", "Sources without the variable\n", "missing required variable {context_str}"),
        ("condense.txt", "{chat_history} {question} {today}", "unknown variable {today}"),
        ("condense.txt", "Only {question}", "missing required variable {chat_history}"),
        ("system_strict.txt", "   \n", "empty"),
    ],
)
def test_mistakes_name_the_file(prompts_dir: Path, file: str, content: str, message: str):
    (prompts_dir / file).write_text(content)
    with pytest.raises(PromptError, match=message) as raised:
        load(prompts_dir)
    assert file in str(raised.value)


def test_missing_file(prompts_dir: Path):
    (prompts_dir / "strict_refusal.txt").unlink()
    with pytest.raises(PromptError, match=r"strict_refusal\.txt: missing"):
        load(prompts_dir)


def test_version_follows_content(prompts_dir: Path):
    before = load(prompts_dir).version
    (prompts_dir / "system_balanced.txt").write_text("\nBe brief.\n")
    assert load(prompts_dir).version != before


def test_store_reloads_changes_and_keeps_last_valid_set(prompts_dir: Path):
    store = PromptStore(prompts_dir)
    first = store.current()
    path = prompts_dir / "system_creative.txt"
    path.write_text("\nBe imaginative, cite sources [n].\n")
    os.utime(path, ns=(1, 1))
    reloaded = store.current()
    assert reloaded.version != first.version and "imaginative" in reloaded.system("creative")

    (prompts_dir / "context.txt").write_text("no variable here")
    os.utime(prompts_dir / "context.txt", ns=(2, 2))
    assert store.current().version == reloaded.version  # the broken edit is refused


def test_modes_set_temperature_and_policy():
    assert [POLICIES[m].temperature for m in ResponseMode] == [0.1, 0.5, 0.9]
    assert POLICIES[ResponseMode.STRICT].refuses_without_relevant_source
    assert not POLICIES[ResponseMode.BALANCED].refuses_without_relevant_source


def test_prompts_check_command(prompts_dir: Path):
    import subprocess
    import sys

    ok = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "citechat", "prompts", "check", "--dir", str(prompts_dir)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "6 templates" in ok.stdout and "version" in ok.stdout
    (prompts_dir / "condense.txt").write_text("{question} only")
    bad = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "citechat", "prompts", "check", "--dir", str(prompts_dir)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "condense.txt: missing required variable {chat_history}" in bad.stderr


async def test_service_refuses_to_start_with_broken_templates(settings, prompts_dir: Path):

    from citechat.api.app import create_app
    from tests.conftest import derive, running

    (prompts_dir / "context.txt").write_text("Sources: {sources}")
    with pytest.raises(PromptError, match=r"context\.txt: unknown variable \{sources\}"):
        async with running(create_app(derive(settings, prompts_dir=prompts_dir))):
            pass
