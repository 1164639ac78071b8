"""``citechat eval run`` and ``citechat eval compare``: the terminal side (progress, tables, exit codes).

Exit codes: 0 the run passed; 1 it ran but failed its gate (a threshold, or a regression against the baseline);
2 it could not run (bad suite, missing dataset, bad configuration), with a message and no traceback.
"""

import asyncio
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from citechat.errors import CitechatError
from citechat.evaluation import datasets, gate, report, runner
from citechat.evaluation.scoring import gated_by_default
from citechat.evaluation.suite import SuiteError, load_suite
from citechat.settings import Settings

SUMMARY = ("token_f1", "answer_recall", "citation_precision", "citation_recall", "faithfulness", "refusal_accuracy")


class ResultsError(Exception):
    """A file that is not the results.json of a run."""


def run(
    suite_path: Path, out: Path | None, baseline: Path | None, options: runner.RunOptions, limit: int | None
) -> int:
    try:
        suite = load_suite(suite_path)
        if limit is not None:
            suite.dataset.limit = limit
        dataset = datasets.load(suite.dataset, suite.resolve(suite.dataset.path))
        before = read_results(baseline) if baseline else None
        settings = runner.suite_settings(suite, Settings())
    except (SuiteError, datasets.DatasetError, ResultsError) as exc:
        typer.echo(str(exc), err=True)
        return 2
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:

        def track(what: str, total: int):
            task = progress.add_task(what, total=total)
            return lambda: progress.advance(task)

        try:
            results = asyncio.run(runner.run_suite(suite, dataset, settings, options, track))
        except CitechatError as exc:
            typer.echo(f"the evaluation could not run: {exc.detail}", err=True)
            return 2
    failures = gate.check(results, before)
    against = None
    if before is not None:
        against = [c for c in gate.changes(before, results) if gated_by_default(c.key.rsplit("/", 1)[-1])]
    folder = out or Path("eval-results") / suite.name
    paths = report.write(results, folder, failures, against)
    _summary(results)
    typer.echo("wrote " + ", ".join(str(p) for p in paths))
    for failure in failures:
        typer.echo(f"FAILED: {failure}", err=True)
    return 1 if failures else 0


def compare(first: Path, second: Path, everything: bool) -> int:
    try:
        a, b = read_results(first), read_results(second)
    except ResultsError as exc:
        typer.echo(str(exc), err=True)
        return 2
    rows = gate.changes(a, b, everything=everything)
    console = Console()
    if not rows:
        console.print("no differences in the figures")
    else:
        same = first.name == second.name
        table = Table("figure", "A" if same else first.name, "B" if same else second.name, "change")
        for change in rows:
            delta = "" if change.delta is None else f"{change.delta:+.4f}"
            style = {"better": "green", "worse": "red"}.get(change.verdict, "")
            table.add_row(
                change.key, _number(change.before), _number(change.after), f"[{style}]{delta} {change.verdict}"
            )
        console.print(table)
    if moved := gate.question_changes(a, b):
        table = Table("answer", "what", "change", title="Answers that changed")
        for row in moved:
            table.add_row(*row)
        console.print(table)
    return 0


def read_results(path: Path) -> dict:
    try:
        results = json.loads(path.read_text())
    except OSError as exc:
        raise ResultsError(f"{path}: cannot be read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ResultsError(f"{path}: not JSON") from None
    if not isinstance(results, dict) or not isinstance(results.get("metrics"), dict) or "suite" not in results:
        raise ResultsError(f"{path}: not the results.json of `citechat eval run`")
    return results


def _summary(results: dict) -> None:
    table = Table("config", "section", "figures", title=f"{results['suite']['name']}")
    for config, sections in results["metrics"].items():
        for section, figures in sections.items():
            names = ("hit@5", "mrr@10", "ndcg@10") if section == "retrieval" else SUMMARY
            shown = [f"{n} {_number(figures.get(n))}" for n in names if n in figures]
            table.add_row(config, section, ", ".join(shown))
    Console().print(table)


def _number(value) -> str:
    return "-" if value is None else (str(value) if isinstance(value, int) else f"{value:.4f}")
