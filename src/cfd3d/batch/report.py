"""The batch's index: ``index.json`` for programs, ``index.html`` (a contact sheet) for
people. Paths inside are relative to the batch folder, so the folder can be moved or
served as it is."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

from cfd3d.io import atomic_write_text

INDEX_JSON = "index.json"
INDEX_HTML = "index.html"


def previous_records(root: Path) -> dict[str, dict[str, Any]]:
    """The records of an earlier ``index.json`` in ``root`` by run name (empty if none or
    unreadable)."""
    try:
        runs = json.loads((root / INDEX_JSON).read_text(encoding="utf-8"))["runs"]
        return {r["name"]: r for r in runs if isinstance(r, dict) and "name" in r}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_index(root: Path, records: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``root/index.json`` and ``root/index.html`` atomically; returns both paths."""
    counts = {s: sum(r["status"] == s for r in records) for s in ("finished", "failed", "pending")}
    data = {
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "counts": counts,
        "runs": records,
    }
    json_path = atomic_write_text(root / INDEX_JSON, json.dumps(data, indent=2) + "\n")
    html_path = atomic_write_text(root / INDEX_HTML, contact_sheet(data))
    return json_path, html_path


def _card(record: dict[str, Any]) -> str:
    e = html.escape
    files = record.get("files", {})
    media = ""
    if "preview" in files:
        media += f'<img class="preview" src="{e(files["preview"])}" alt="preview">'
    if "gif" in files:
        media += f'<img class="turntable" src="{e(files["gif"])}" alt="turntable">'
    if not media:
        media = '<div class="empty">no images</div>'
    links = " ".join(
        f'<a href="{e(path)}">{e(kind)}</a>'
        for kind, path in files.items()
        if kind in ("glb", "obj", "ply", "mp4")
    )
    wall = record.get("wall_s")
    facts = [
        f"seed {record.get('seed')}",
        e(str(record.get("pipeline") or record.get("preset") or "")),
        e(str(record.get("method") or "")),
        f"{wall:.1f} s" if isinstance(wall, (int, float)) else "",
    ]
    error = record.get("error")
    return (
        f'<div class="card {e(record["status"])}">{media}'
        f'<p class="prompt">{e(record["prompt"])}</p>'
        f'<p class="facts">{" · ".join(f for f in facts if f)}</p>'
        f'<p class="status">{e(record["status"])}</p>'
        + (f'<p class="error">{e(error)}</p>' if error else "")
        + (f'<p class="links">{links}</p>' if links else "")
        + f'<p class="folder"><a href="{e(record["name"])}/">{e(record["name"])}</a></p></div>'
    )


def contact_sheet(data: dict[str, Any]) -> str:
    """The HTML page: one card per run (preview, turntable, prompt, method, seed, status,
    wall time, links to the mesh and video)."""
    counts = data["counts"]
    cards = "\n".join(_card(r) for r in data["runs"])
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cfd3d batch</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #fafafa; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.card {{ width: 270px; background: white; border: 1px solid #ddd; padding: 8px; }}
.card.failed {{ border-color: #c33; }}
.card img {{ width: 128px; height: 128px; object-fit: contain; }}
.card p {{ margin: 4px 0; font-size: 13px; overflow-wrap: anywhere; }}
.prompt {{ font-weight: bold; }}
.error {{ color: #c33; }}
.empty {{ height: 128px; color: #999; }}
</style></head><body>
<h1>cfd3d batch</h1>
<p>{html.escape(summary)} — updated {html.escape(data["updated"])}</p>
<div class="grid">
{cards}
</div></body></html>
"""
