"""What every benchmark report records beside its figures: the machine and the versions measured."""

import json
import os
import platform
import statistics
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import psutil

_PACKAGES = (
    "citechat",
    "llama-index-core",
    "openai",
    "fastapi",
    "uvicorn",
    "onnxruntime",
    "sqlalchemy",
    "asyncpg",
    "pgserver",
)


def environment() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        # Other work on the machine when the report was written: serving figures depend on it.
        "load_average_1_5_15_min": [round(load, 2) for load in os.getloadavg()],
        "python": platform.python_version(),
        "versions": {p: version(p) for p in _PACKAGES},
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def write(results: dict, out: Path, name: str, markdown: str) -> tuple[Path, Path]:
    """``name``.json (the results and the environment) and ``name``.md (``markdown`` and a line on the machine)."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    env = environment()
    json_path.write_text(json.dumps({"environment": env, **results}, indent=2))
    md_path.write_text(f"{markdown}\n{machine_line(env)}\n")
    return json_path, md_path


def machine_line(env: dict) -> str:
    load = " / ".join(f"{x:g}" for x in env["load_average_1_5_15_min"])
    versions = ", ".join(f"{name} {v}" for name, v in env["versions"].items())
    return (
        f"Measured {env['date']} on {env['cores']} cores ({env['cpu']}), {env['memory_gb']} GB, load average "
        f"{load} (1/5/15 min) at the end; Python {env['python']}, {versions}."
    )


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""
