"""The end-of-run table: kept, skipped by reason, time."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def outcome(record: dict[str, Any]) -> str:
    """ "kept", "skipped: <reason>" or "error: <exception type>"."""
    return "kept" if record["status"] == "kept" else f"{record['status']}: {record['reason']}"


def summarize(records: list[dict[str, Any]], seconds: float, manifest: Path | None) -> dict[str, Any]:
    """Counts by outcome ("kept", "skipped: <reason>", "error: <type>"), reuse and time, as JSON-able data."""
    outcomes = Counter(outcome(r) for r in records)
    return {
        "inputs": len(records),
        "kept": outcomes.get("kept", 0),
        "outcomes": dict(sorted(outcomes.items())),
        "reused": sum(1 for r in records if r.get("reused")),
        "seconds": round(seconds, 2),
        "manifest": str(manifest) if manifest else None,
    }


def print_summary(records: list[dict[str, Any]], seconds: float, manifest: Path | None) -> dict[str, Any]:
    """Print the table (one row per outcome) and return `summarize(...)`."""
    summary = summarize(records, seconds, manifest)
    table = Table(title=f"preprocess: {summary['inputs']} inputs in {summary['seconds']:.1f} s")
    table.add_column("outcome")
    table.add_column("clips", justify="right")
    table.add_column("time (s)", justify="right")
    for name, count in summary["outcomes"].items():
        spent = sum(r["seconds"] for r in records if outcome(r) == name)
        table.add_row(name, str(count), f"{spent:.1f}")
    table.add_row("(of which done by an earlier run)", str(summary["reused"]), "")
    console = Console()
    console.print(table)
    console.print(f"manifest: {manifest}" if manifest else "manifest: not written (see the log above)")
    return summary
