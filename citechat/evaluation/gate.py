"""Whether a run may pass: its suite's thresholds, and no regression beyond tolerance against a baseline run.

Figures are named ``config/section/metric`` (section: a mode, or ``retrieval``). A threshold names a metric and,
optionally, a mode and a config, and applies to every figure it matches. Against a baseline, every quality figure
of the baseline is compared (absolute difference, in the metric's better direction) with the suite's
``tolerances`` or its default ``tolerance``; cost and speed figures only when ``tolerances`` names them. A figure
the baseline has and this run lacks is a failure too: the baseline no longer describes the suite.
"""

from dataclasses import dataclass

from citechat.evaluation.scoring import direction, flatten, gated_by_default

EPSILON = 1e-9


@dataclass(frozen=True)
class Change:
    key: str
    before: float | int | None
    after: float | int | None

    @property
    def delta(self) -> float | None:
        return None if self.before is None or self.after is None else self.after - self.before

    @property
    def verdict(self) -> str:
        """better, worse, or '' (no direction, or equal)."""
        sign = direction(self.key.rsplit("/", 1)[-1])
        if not sign or not self.delta:
            return ""
        return "better" if self.delta * sign > 0 else "worse"


def check(results: dict, baseline: dict | None = None) -> list[str]:
    """Every reason the run fails, in words; empty when it passes."""
    suite, figures = results["suite"], flatten(results["metrics"])
    failures = []
    for threshold in suite.get("thresholds", []):
        matched = [key for key in figures if _matches(key, threshold)]
        if not matched:
            failures.append(f"the threshold on {_describe(threshold)} matches no figure of this run")
        for key in matched:
            value = figures[key]
            if value is None:
                failures.append(f"{key} has no value, but has a threshold")
            elif threshold.get("min") is not None and value < threshold["min"] - EPSILON:
                failures.append(f"{key} = {value:.4g} is below its threshold {threshold['min']:g}")
            elif threshold.get("max") is not None and value > threshold["max"] + EPSILON:
                failures.append(f"{key} = {value:.4g} is above its threshold {threshold['max']:g}")
    if baseline is not None:
        failures += regressions(figures, flatten(baseline["metrics"]), suite)
    return failures


def regressions(figures: dict, before: dict, suite: dict) -> list[str]:
    tolerances, default = suite.get("tolerances", {}), suite.get("tolerance", 0.0)
    failures = []
    for key, old in before.items():
        metric = key.rsplit("/", 1)[-1]
        if old is None or not (gated_by_default(metric) or metric in tolerances):
            continue
        if key not in figures:
            failures.append(f"{key} is in the baseline but not in this run")
            continue
        new, allowed = figures[key], tolerances.get(metric, default)
        if new is None:
            failures.append(f"{key} has no value (baseline {old:.4g})")
        elif (old - new) * direction(metric) > allowed + EPSILON:
            failures.append(f"{key} regressed from {old:.4g} to {new:.4g} (tolerance {allowed:g})")
    return failures


def changes(before: dict, after: dict, *, everything: bool = False) -> list[Change]:
    """Figures of two runs side by side: those that differ (or all), in a stable order."""
    a, b = flatten(before["metrics"]), flatten(after["metrics"])
    keys = list(dict.fromkeys([*a, *b]))
    return [Change(k, a.get(k), b.get(k)) for k in keys if everything or a.get(k) != b.get(k)]


def question_changes(before: dict, after: dict) -> list[tuple[str, str, str]]:
    """(config/mode/id, what changed, how) for answers whose refusal, success or F1 (by 0.2+) changed."""
    old = {(r["config"], r["mode"], r["id"]): r for r in before.get("answers", [])}
    found = []
    for record in after.get("answers", []):
        key = (record["config"], record["mode"], record["id"])
        if (previous := old.get(key)) is None:
            continue
        name = "/".join(key)
        if previous["status"] != record["status"]:
            found.append((name, "status", f"{previous['status']} -> {record['status']}"))
        was, now = previous["scores"], record["scores"]
        if was.get("refused") != now.get("refused"):
            found.append((name, "refused", f"{was.get('refused')} -> {now.get('refused')}"))
        f1_before, f1_after = was.get("token_f1"), now.get("token_f1")
        if f1_before is not None and f1_after is not None and abs(f1_after - f1_before) >= 0.2:
            found.append((name, "token_f1", f"{f1_before:.2f} -> {f1_after:.2f}"))
    return found


def _matches(key: str, threshold: dict) -> bool:
    config, section, metric = key.split("/", 2)
    return (
        metric == threshold["metric"]
        and threshold.get("mode") in (None, section)
        and threshold.get("config") in (None, config)
    )


def _describe(threshold: dict) -> str:
    where = [f"{k} {threshold[k]}" for k in ("mode", "config") if threshold.get(k)]
    return threshold["metric"] + (f" ({', '.join(where)})" if where else "")
