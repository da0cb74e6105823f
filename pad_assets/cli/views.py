"""Tables and trees for the terminal (rich), built from the reports that maintenance,
sharing and provenance return.

The reports stay plain data (``as_dict`` for ``--json``, ``str`` for logs); only what a
person reads in a terminal is drawn here.
"""

from __future__ import annotations

from typing import Any

from ..maintenance.common import human_bytes


def stats_view(st: Any) -> list[Any]:
    """``cache stats``: summary line, then per layer, per dataset, per model, folders."""
    from rich.table import Table
    from rich.text import Text

    out: list[Any] = [Text(
        f"cache {st.root}: {st.items} items in {st.shards} shards, "
        f"{human_bytes(st.shard_bytes)} on disk, {human_bytes(st.live_bytes)} live payload, "
        f"{human_bytes(st.dead_bytes)} reclaimable by gc")]
    t = Table(title="per layer", title_justify="left")
    for col in ("layer", "items", "bytes", "shared with another layer"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    total = 0
    for layer, v in sorted(st.layers.items()):
        total += v["bytes"]
        shared = st.layer_shared.get(layer, 0)
        t.add_row(layer, str(v["items"]), human_bytes(v["bytes"]),
                  human_bytes(shared) if shared else "")
    out.append(t)
    if st.shared_bytes:
        out.append(Text(
            f"The layers add up to {human_bytes(total)}; {human_bytes(st.shared_bytes)} of "
            "payload is referenced by two layers (a uint8 tensor identical to its "
            "preprocessed array is stored once) and counted in each, so the live payload is "
            f"{human_bytes(st.live_bytes)}.", style="dim"))
    if st.datasets:
        t = Table(title="per dataset (an image two datasets list counts in each)",
                  title_justify="left")
        for col in ("dataset", "cards", "ok", "failed", "evicted", "raw missing", "raw",
                    "derived items", "derived"):
            t.add_column(col, justify="left" if col == "dataset" else "right")
        for ds, v in sorted(st.datasets.items()):
            t.add_row(ds, str(v["cards"]), str(v["ok"]), str(v["failed"]), str(v["evicted"]),
                      str(v["raw_missing"]), human_bytes(v["raw_bytes"]),
                      str(v["derived_items"]), human_bytes(v["derived_bytes"]))
        out.append(t)
    if st.models:
        t = Table(title="per model (predictions are metadata only; weights stored once)",
                  title_justify="left")
        for col in ("model", "signature", "predictions", "datasets", "weights"):
            t.add_column(col, justify="right" if col in ("predictions", "weights") else "left")
        for sig, m in sorted(st.models.items(), key=lambda kv: (kv[1]["name"], kv[0])):
            t.add_row(m["name"], sig[:12], str(m["predictions"]),
                      ", ".join(m["datasets"]) or "-",
                      human_bytes(m["weights_bytes"]) if m["weights_bytes"] else "")
        out.append(t)
    if st.folders:
        t = Table(title="beside the shards", title_justify="left")
        for col in ("folder", "files", "bytes", "note"):
            t.add_column(col, justify="right" if col in ("files", "bytes") else "left")
        notes = {"artifacts": "weights as files for model runtimes",
                 "reports": "comparison reports, one folder per run",
                 "demo_models": "the demo's trained models"}
        for name, v in sorted(st.folders.items()):
            note = notes.get(name, "")
            if v.get("stale_files"):
                note += f"; {v['stale_files']} stale: gc removes them"
            if "runs" in v:
                note += f"; {v['runs']} runs: gc --older-than AGE removes old ones"
            t.add_row(f"{name}/", str(v["files"]), human_bytes(v["bytes"]), note)
        out.append(t)
    extra = []
    if st.refs:
        extra.append("refs: " + ", ".join(f"{k} {v}" for k, v in sorted(st.refs.items())))
    if st.orphan_blobs:
        extra.append(f"{st.orphan_blobs} unreferenced payloads")
    if st.retired_shards:
        extra.append(f"{st.retired_shards} retired shards awaiting deletion")
    if st.partial_files:
        extra.append(f"{st.partial_files} partial files ({human_bytes(st.partial_bytes)})")
    if st.quarantined_files:
        extra.append(f"{st.quarantined_files} quarantined files "
                     f"({human_bytes(st.quarantined_bytes)}) in quarantine/")
    if extra:
        out.append(Text("; ".join(extra)))
    return out


def _p(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _short(key: Any) -> str:
    return str(key)[:12] if key else "-"


def _section_label(name: str, sec: dict[str, Any]) -> str:
    status = sec.get("status", "")
    mark = {"present": "[green]✓[/]", "missing": "[yellow]∅[/]",
            "evicted": "[yellow]evicted[/]"}.get(status, f"[red]{status}[/]")
    bits = [f"[bold]{name}[/] {mark} {_short(sec.get('key'))}"]
    if name == "manifest" and sec.get("row"):
        row = sec["row"]
        bits.append(" ".join(f"{k}={row[k]}" for k in ("drug", "quantity", "split")
                             if row.get(k) is not None))
    elif name == "raw" and status == "present":
        md5 = sec.get("md5_matches_manifest")
        bits.append(f"{human_bytes(int(sec.get('bytes') or 0))}, md5 "
                    f"{'ok' if md5 else 'not in manifest' if md5 is None else 'MISMATCH'}"
                    + (", truncated" if sec.get("truncated") else ""))
    elif name == "preprocessed" and sec.get("pipeline"):
        p = sec["pipeline"]
        bits.append(f"{p.get('name')} v{p.get('code_version')}")
    elif name == "tensor" and sec.get("spec"):
        s = sec["spec"]
        bits.append(f"{s.get('dtype', '')} {s.get('shape', '')}".strip())
    elif name == "prediction" and status == "present":
        r = sec.get("record") or {}
        bits.append(f"{r.get('prediction')} p={_p(r.get('probability'))} ({r.get('status')})")
    elif name == "model":
        bits = [f"[bold]model[/] {sec.get('name')} {_short(sec.get('signature'))}"]
    if status == "evicted":
        bits.append("[dim]image evicted by gc; what was derived from it is still cached[/]")
    elif sec.get("reason") and status != "present":
        bits.append(f"[dim]{sec['reason']}[/]")
    check = sec.get("key_check")
    if check and check != "ok":
        bits.append(f"[red]key check: {check}[/]")
    return "  ".join(b for b in bits if b)


def lineage_tree(lin: dict[str, Any]) -> Any:
    """A short tree: one line per layer (status, key prefix, the one fact that matters)."""
    from rich.tree import Tree

    tree = Tree(f"card [bold]{lin['card_id']}[/] of {lin['dataset']}"
                + (f"  [red]{lin['status']}[/]" if lin.get("status") else ""))
    node = tree
    for name in ("manifest", "raw", "model", "preprocessed", "tensor", "prediction"):
        sec = lin.get(name)
        if sec is None:
            continue
        if name == "model":
            tree.add(_section_label(name, sec))
            continue
        node = node.add(_section_label(name, sec))
    preds = lin.get("cached_predictions")
    if preds is not None:
        sub = node.add(f"[bold]cached predictions[/] [{len(preds)}]")
        for p in preds:
            r = p["record"]
            sub.add(f"{p['model']['name']} {_short(p['model']['signature'])}: "
                    f"{r.get('prediction')} p={_p(r.get('probability'))} ({r.get('status')})"
                    f"  {_short(p['key'])}")
    return tree
