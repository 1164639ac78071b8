"""The run's quality figures as a bar chart (PNG): retrieval per config, and answers per config and mode.

matplotlib with its Agg backend: no display, no torch. Only figures on a 0-1 scale are drawn, so bars compare.
"""

from pathlib import Path

from citechat.evaluation.scoring import ANSWER_SCORES

RETRIEVAL = ("hit@1", "hit@5", "mrr@10", "ndcg@10", "recall@10")
ANSWERS = tuple(m for m in ANSWER_SCORES if m != "exact_match")  # a quoting answerer never matches exactly


def draw(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = results["metrics"]
    retrieval = {config: sections["retrieval"] for config, sections in metrics.items()}
    answers = {
        f"{config} / {mode}": figures
        for config, sections in metrics.items()
        for mode, figures in sections.items()
        if mode != "retrieval"
    }
    panels = [("Retrieval", retrieval, RETRIEVAL)] + ([("Answers", answers, ANSWERS)] if answers else [])
    figure, axes = plt.subplots(len(panels), 1, figsize=(11, 4.2 * len(panels)), squeeze=False)
    for axis, (title, series, names) in zip(axes[:, 0], panels, strict=True):
        names = [n for n in names if any(f.get(n) is not None for f in series.values())]
        width = 0.8 / max(1, len(series))
        for i, (label, figures) in enumerate(series.items()):
            positions = [x + i * width for x in range(len(names))]
            bars = axis.bar(positions, [figures.get(n) or 0.0 for n in names], width, label=label)
            axis.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        axis.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(names))], names, rotation=20)
        axis.set_ylim(0, 1.1)
        axis.set_title(f"{results['suite']['name']}: {title}")
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize="small", ncols=min(3, len(series)))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
