"""Conformance: pad_assets against the released PAD tool, card by card, models 16 and 18.

    python -m benchmarks.conformance_pad_analytics            # 40 emulator cards + 2 real
    python -m benchmarks.conformance_pad_analytics --cards 60

The first run creates ``benchmarks/out/pad-analytics-0.2.2/`` (a virtualenv with
``pad-analytics==0.2.2`` from the package registry, ~2 min; never a dependency of the
project, see ``real_tool.py``). Then, against one emulator on 127.0.0.1 serving the demo
models (16: TF Lite drug classifier, 18: PLS coefficients) and ``--cards`` synthetic cards
plus the two real cards of ``pad_assets_tests/data/real`` (real labels) and one card whose
drug no coefficient file knows:

* the real tool runs unmodified in its venv: ``predict(card_id, model_id)`` for every card
  and both models, only its host ``https://pad.crc.nd.edu`` rewritten to the emulator's;
* pad_assets runs ``CachedDataset.apply_model`` with ``PADTensorFlowAdapter(model_id=16)``
  and ``PLSModelAdapter(model_id=18)`` on a fresh cache.

Compared per card: the actual label, model 16's label (standardised) and probability
(|diff| < 1e-5) and energy, model 18's concentration (|diff| < 1e-9), and unknown drugs
(the tool's ``-1`` with its "NOT IN COEFFICIENTS FILE" path against pad_assets'
``unknown_drug`` status). Prints the figures, writes them to
``benchmarks/out/conformance-<time>.json``; exit code 1 on any disagreement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/conformance_pad_analytics.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import real_tool  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL_DIR = ROOT / "pad_assets_tests" / "data" / "real"
REAL_CARDS = {19208: ("ceftriaxone", 50), 25834: ("amoxicillin", 100)}
DATASET = "pad_analytics_conformance"
FIRST_ID = 10000
PROBABILITY_TOL = 1e-5
PLS_TOL = 1e-9


def _emulator(n_cards: int, unknown_id: int) -> Any:
    from pad_assets.devtools.emulator import CardAttributes, DatasetSpec, Emulator, EmulatorConfig

    ids = [*range(FIRST_ID, FIRST_ID + n_cards), *REAL_CARDS, unknown_id]
    overrides = {cid: CardAttributes(drug, q, "unknown", cid)
                 for cid, (drug, q) in REAL_CARDS.items()}
    overrides[unknown_id] = CardAttributes("unobtainium", 50, "unknown", unknown_id)
    config = EmulatorConfig(datasets=[DatasetSpec(DATASET, ids)], real_images_dir=REAL_DIR,
                            card_overrides=overrides)
    return Emulator(config), ids


def _pad_assets(emu: Any, cache: Path) -> dict[int, dict[int, dict[str, Any]]]:
    from pad_assets import CachedDataset, PADTensorFlowAdapter, PLSModelAdapter
    from pad_assets.settings import Settings

    settings = Settings.from_env(cache_dir=cache, offline=False, api_url=emu.base_url,
                                 registry_url=emu.registry_url)
    out: dict[int, dict[int, dict[str, Any]]] = {}
    ds = CachedDataset(DATASET, settings=settings, progress=False)
    try:
        for model_id, model in ((16, PADTensorFlowAdapter(model_id=16, settings=settings)),
                                (18, PLSModelAdapter(model_id=18, settings=settings))):
            frame = ds.apply_model(model)
            rows: dict[int, dict[str, Any]] = {}
            for row in frame.to_dict("records"):
                rows.setdefault(int(row["card_id"]), row)  # a card listed twice: same result
            out[model_id] = rows
    finally:
        ds.close()
    return out


def _close(a: Any, b: Any) -> float:
    return abs(float(a) - float(b))


def compare(tool: list[dict[str, Any]], ours: dict[int, dict[int, dict[str, Any]]]
            ) -> dict[str, Any]:
    """Per-card comparison; returns the figures and the list of disagreements."""
    from pad_assets.models.base import standardize_label

    problems: list[str] = []
    fig: dict[str, Any] = {16: {"cards": 0, "labels_equal": 0, "actual_equal": 0,
                                "max_abs_probability_diff": 0.0, "max_abs_energy_diff": 0.0},
                           18: {"cards": 0, "values_compared": 0, "max_abs_value_diff": 0.0,
                                "unknown_drug_both": 0, "actual_equal": 0}}
    for r in tool:
        cid, mid = int(r["card_id"]), int(r["model_id"])
        mine = ours[mid].get(cid)
        if mine is None:
            problems.append(f"card {cid} model {mid}: no pad_assets row")
            continue
        f = fig[mid]
        f["cards"] += 1
        if mid == 16:
            label, probability, energy = r["prediction"]
            if mine["status"] != "ok":
                problems.append(f"card {cid} model 16: pad_assets {mine['status']} "
                                f"({mine['detail']}), tool {label}")
                continue
            f["labels_equal"] += int(standardize_label(label) == mine["prediction"])
            if standardize_label(label) != mine["prediction"]:
                problems.append(f"card {cid} model 16: label {mine['prediction']!r} vs "
                                f"tool {label!r}")
            f["actual_equal"] += int(standardize_label(r["actual"]) == mine["actual"])
            dp = _close(probability, mine["probability"])
            f["max_abs_probability_diff"] = max(f["max_abs_probability_diff"], dp)
            f["max_abs_energy_diff"] = max(f["max_abs_energy_diff"],
                                           _close(energy, mine["energy"]))
            if not dp < PROBABILITY_TOL:
                problems.append(f"card {cid} model 16: probability {mine['probability']} vs "
                                f"tool {probability} (|diff| {dp:.3g})")
        else:
            value = r["prediction"]
            f["actual_equal"] += int(_close(r["actual"], mine["actual"]) == 0)
            tool_unknown = isinstance(value, int) and value == -1  # its unknown-drug return
            if mine["status"] == "unknown_drug" or tool_unknown:
                if mine["status"] == "unknown_drug" and tool_unknown:
                    f["unknown_drug_both"] += 1
                else:
                    problems.append(f"card {cid} model 18: pad_assets {mine['status']} "
                                    f"{mine['prediction']}, tool {value!r}")
                continue
            if mine["status"] != "ok" or not isinstance(value, float) or math.isnan(value):
                problems.append(f"card {cid} model 18: pad_assets {mine['status']}, tool "
                                f"{value!r}")
                continue
            d = _close(value, mine["prediction"])
            f["values_compared"] += 1
            f["max_abs_value_diff"] = max(f["max_abs_value_diff"], d)
            if not d < PLS_TOL:
                problems.append(f"card {cid} model 18: {mine['prediction']!r} vs tool "
                                f"{value!r} (|diff| {d:.3g})")
    return {"model_16": fig[16], "model_18": fig[18], "problems": problems}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.conformance_pad_analytics",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=40, help="synthetic emulator cards")
    parser.add_argument("--out", type=Path, default=real_tool.DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.cards < 1:
        parser.error("--cards must be >= 1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    python = real_tool.ensure_venv(out, log)
    unknown_id = FIRST_ID + args.cards + 1000
    emu, ids = _emulator(args.cards, unknown_id)
    with emu, tempfile.TemporaryDirectory(prefix="pad-conformance-") as tmp:
        log(f"emulator {emu.base_url}: {len(ids)} cards ({args.cards} synthetic, "
            f"{len(REAL_CARDS)} real, 1 unknown drug); demo models 16 and 18")
        log("pad-analytics 0.2.2: predict(card, 16) and predict(card, 18) per card")
        tool = real_tool.predict(python, emu.base_url, ids, [16, 18])
        log(f"  done: {tool['requests']}")
        log("pad_assets: apply_model(16), apply_model(18) on a fresh cache")
        ours = _pad_assets(emu, Path(tmp) / "cache")
    result = compare(tool["results"], ours)
    result.update(cards=len(ids), synthetic_cards=args.cards, real_cards=sorted(REAL_CARDS),
                  unknown_drug_card=unknown_id, pad_analytics=tool["pad_analytics_version"],
                  host_rewrites=tool["requests"], date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  seconds=round(time.time() - started, 1))
    m16, m18 = result["model_16"], result["model_18"]
    print(f"pad-analytics {result['pad_analytics']} vs pad_assets on {len(ids)} emulator cards "
          f"({args.cards} synthetic, real {sorted(REAL_CARDS)}, unknown drug {unknown_id})")
    print(f"model 16: labels equal {m16['labels_equal']}/{m16['cards']}, actual equal "
          f"{m16['actual_equal']}/{m16['cards']}, max |probability diff| "
          f"{m16['max_abs_probability_diff']:.3g} (tol {PROBABILITY_TOL:g}), max |energy diff| "
          f"{m16['max_abs_energy_diff']:.3g}")
    print(f"model 18: values compared {m18['values_compared']}/{m18['cards']}, max |diff| "
          f"{m18['max_abs_value_diff']:.3g} (tol {PLS_TOL:g}), unknown drug in both "
          f"{m18['unknown_drug_both']}, actual equal {m18['actual_equal']}/{m18['cards']}")
    for p in result["problems"]:
        print(f"  DISAGREE {p}")
    print("conformance: " + ("PASS" if not result["problems"] else
                             f"FAIL ({len(result['problems'])} disagreements)"))
    path = out / f"conformance-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"JSON: {path}")
    return 0 if not result["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
