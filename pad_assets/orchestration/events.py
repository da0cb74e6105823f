"""Per-partition materialization events that record only change, with Dagster provenance.

The image step emits one ``AssetMaterialization`` per (asset, card) rather than an
``Output`` (which would give every partition of a run the same metadata,
dagster-io/dagster#18123). Two things Dagster does for ``Output``s are done here by hand:

- **Reruns record only change.** Before emitting, the latest ``dagster/data_version`` of
  each partition is read in one query per asset; a partition whose content key is
  unchanged gets no new event (the run log says how many were unchanged). A partition's
  content key already hashes what its code version hashes (pipeline parameters, tensor
  spec, model signature), so an unchanged key also means an unchanged version.
- **Provenance tags** (``dagster/code_version``, ``dagster/input_data_version/<parent>``,
  ``dagster/input_event_pointer/<parent>``) so the UI's "unsynced" status is computed per
  partition: a new model signature (code version) or a new parent data version marks
  exactly the affected partitions. Parent pointers are read after the parent layer's events
  are stored (events are written as they are yielded), one query per layer.

**Shared facts once per asset and run.** What is the same for every card of a run (pipeline
parameters, tensor spec, model record and signature, library versions, manifest version) is
one unpartitioned ``AssetObservation`` of the asset ("shared facts"), yielded before the
asset's first new materialization of the step; each card's event keeps what is its own
(its keys, checksums, source, result, chain) and a ``shared_facts`` link to that run. The
per-card events were 2.6-9.3 KB, most of it repeated on every card (B6, 200 cards).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
    NULL_EVENT_POINTER,
    get_input_data_version_tag,
    get_input_event_pointer_tag,
)

from .audit_page import shared_facts_link, typed

MATERIALIZATION = dg.DagsterEventType.ASSET_MATERIALIZATION

#: (card id, content key, metadata builder, inputs {parent asset key: parent content key})
PartitionEvent = tuple[int, str, Callable[[], Mapping[str, Any]], Mapping[dg.AssetKey, str]]


class ChangeRecorder:
    """Emits materializations for changed partitions only, and counts what it skipped."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str = "") -> None:
        self.storage = instance.event_log_storage
        self.run_id = run_id
        self.recorded: Counter[str] = Counter()
        self.unchanged: Counter[str] = Counter()
        self._shared_sent: set[str] = set()

    def latest_versions(self, key: dg.AssetKey, partitions: Sequence[str]) -> dict[str, str]:
        tags = self.storage.get_latest_tags_by_partition(
            key, MATERIALIZATION, [DATA_VERSION_TAG], asset_partitions=list(partitions))
        return {p: t.get(DATA_VERSION_TAG, "") for p, t in tags.items()}

    def unchanged_cards(self, key: dg.AssetKey, content: Mapping[int, str]) -> set[int]:
        """Cards whose latest event already records this content key (one query)."""
        latest = self.latest_versions(key, [str(c) for c in content])
        return {c for c, k in content.items() if latest.get(str(c)) == k}

    def pointers(self, key: dg.AssetKey, partitions: Sequence[str]) -> dict[str, int]:
        return dict(self.storage.get_latest_storage_id_by_partition(
            key, MATERIALIZATION, partitions=set(partitions)))

    def layer(self, key: dg.AssetKey, code_version: str, events: Sequence[PartitionEvent],
              shared: Callable[[], Mapping[str, Any]] | None = None
              ) -> Iterator[dg.AssetMaterialization | dg.AssetObservation]:
        """Materializations of one asset's changed partitions; before the first of them in
        this step, the asset's ``shared`` facts (one observation per asset and run)."""
        if not events:
            return
        parts = [str(c) for c, *_ in events]
        latest = self.latest_versions(key, parts)
        parents = {p for *_, inputs in events for p in inputs}
        pointers = {p: self.pointers(p, parts) for p in parents}
        name = key.to_user_string()
        for card, content_key, meta, inputs in events:
            part = str(card)
            if latest.get(part) == content_key:
                self.unchanged[name] += 1
                continue
            tags = {DATA_VERSION_TAG: content_key, DATA_VERSION_IS_USER_PROVIDED_TAG: "true",
                    CODE_VERSION_TAG: code_version}
            for parent, parent_version in inputs.items():
                pointer = pointers[parent].get(part)
                tags[get_input_data_version_tag(parent)] = parent_version
                tags[get_input_event_pointer_tag(parent)] = (
                    str(pointer) if pointer is not None else NULL_EVENT_POINTER)
            if shared is not None and name not in self._shared_sent:
                self._shared_sent.add(name)
                yield dg.AssetObservation(asset_key=key, metadata=typed(
                    {"shared_facts": "same for every card this run recorded",
                     "code_version": code_version, **shared()}))
            card_meta = dict(meta())
            if shared is not None:
                card_meta["shared_facts"] = shared_facts_link(self.run_id, code_version)
            self.recorded[name] += 1
            yield dg.AssetMaterialization(asset_key=key, partition=part,
                                          metadata=typed(card_meta), tags=tags)

    def summary(self) -> str:
        names = sorted(set(self.recorded) | set(self.unchanged))
        parts = [f"{n.rsplit('/', 1)[-1]}: {self.recorded[n]} new, {self.unchanged[n]} unchanged"
                 for n in names]
        return ("materializations recorded only for changed content keys; "
                + ("; ".join(parts) if parts else "nothing selected"))
