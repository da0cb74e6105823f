"""One card's provenance as a W3C PROV document (the ``prov`` library) and a picture of it.

Why ``prov``: the audit export writes PROV-JSON for a whole dataset by hand, because it
must be byte-for-byte deterministic and stream tens of thousands of records. For one
card, a researcher wants a PROV *object*: serialisable to PROV-N (readable), PROV-JSON,
PROV-XML or RDF, validated by a PROV implementation, and drawable. ``prov`` gives all of
that, and ``prov.dot`` draws the standard PROV picture (entities as ellipses, activities
as boxes, agents as houses). The document is built from the very same chain records and
PROV-JSON renderer as the audit export (``provenance/audit.py``), so the two never disagree.

The picture needs two optional parts: the ``pydot`` package (``pip install
"pad_assets[picture]"``) for the DOT source, and Graphviz's ``dot`` program (``apt-get
install graphviz``, ``brew install graphviz``) to render it as PNG or SVG. Each raises a
``MissingDependencyError`` naming what is missing and how to get it.

    from pad_assets.provenance.card_prov import card_prov
    prov = card_prov(dataset, 10001)            # every cached model's chain for the card
    print(prov.provn())                         # PROV-N text
    prov.picture("card_10001.svg")              # needs pydot + Graphviz
    prov                                        # in a notebook: the picture (or PROV-N)
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError, PadAssetsError
from ..sources.urls import card_id_of
from .chain import cached_manifest, collect_chains
from .prov_json import prov_doc, prov_raw

if TYPE_CHECKING:
    import prov.model
    import pydot

    from ..dataset import CachedDataset
    from ..models.base import ModelAdapter

PICTURE_FORMATS = ("png", "svg", "pdf", "dot")


class MissingDependencyError(PadAssetsError, RuntimeError):
    """An optional package or program a feature needs is not installed."""


class CardProvenance:
    """The PROV document of one card: its image, each layer, each cached prediction.

    ``document`` is a ``prov.model.ProvDocument``; ``provn()``, ``json()`` serialise it,
    ``dot()`` gives Graphviz source and ``picture()`` renders it. In a notebook the object
    shows its picture (SVG) when Graphviz is installed, else its PROV-N text.
    """

    def __init__(self, dataset: str, card_id: int, document: prov.model.ProvDocument,
                 n_predictions: int) -> None:
        self.dataset = dataset
        self.card_id = card_id
        self.document = document
        self.n_predictions = n_predictions

    def __repr__(self) -> str:
        counts = {k: len(v) for k, v in json.loads(self.json()).items() if k != "prefix"}
        return (f"CardProvenance({self.dataset!r}, card {self.card_id}, "
                f"{self.n_predictions} prediction(s), {counts})")

    def provn(self) -> str:
        """PROV-N, the human-readable PROV notation."""
        return str(self.document.get_provn())

    def json(self) -> str:
        """PROV-JSON as ``prov`` serialises it."""
        return str(self.document.serialize(format="json", indent=2))

    def dot(self, attributes: bool = False) -> pydot.Dot:
        """The PROV picture as a ``pydot`` graph (``prov.dot``), nodes named by label.

        ``attributes=True`` adds every attribute as an annotation node: complete, but a
        chain of eight records then needs a large screen.
        """
        try:
            from prov.dot import prov_to_dot
        except ImportError as exc:
            raise MissingDependencyError(
                "a provenance picture needs the 'pydot' package (prov.dot draws through "
                "it): pip install 'pad_assets[picture]' (or pip install pydot)") from exc
        return prov_to_dot(self.document, use_labels=True, direction="BT",
                           show_element_attributes=attributes,
                           show_relation_attributes=attributes)

    def picture(self, path: str | Path | None = None, format: str | None = None,
                attributes: bool = False) -> bytes:
        """Render the picture (``png``, ``svg``, ``pdf``, or ``dot`` source) and return
        its bytes; with ``path``, also write it there (format from the suffix by default).

        ``dot`` needs only ``pydot``; the others also need Graphviz's ``dot`` program.
        """
        fmt = (format or (Path(path).suffix.lstrip(".") if path else "svg")).lower()
        if fmt not in PICTURE_FORMATS:
            raise InvalidInputError(
                f"picture format {fmt!r} (from {path or 'format='}): expected one of "
                f"{', '.join(PICTURE_FORMATS)}")
        graph = self.dot(attributes)
        if fmt == "dot":
            data = graph.to_string().encode("utf-8")
        else:
            if shutil.which("dot") is None:
                raise MissingDependencyError(
                    f"rendering a provenance picture as {fmt} needs Graphviz's 'dot' program "
                    "on PATH, which was not found: install Graphviz (apt-get install "
                    "graphviz, brew install graphviz, conda install graphviz), or ask for "
                    "format='dot' to get the Graphviz source")
            data = graph.create(prog="dot", format=fmt)
        if path is not None:
            Path(path).write_bytes(data)
        return data

    def _repr_html_(self) -> str:
        head = (f"<p><b>{html.escape(self.dataset)}</b> card {self.card_id}: "
                f"{self.n_predictions} cached prediction(s)</p>")
        try:
            svg = self.picture(format="svg").decode("utf-8")
            return head + svg[svg.find("<svg"):]
        except MissingDependencyError as exc:
            return (head + f"<p><i>No picture: {html.escape(str(exc))}</i></p>"
                    f"<pre>{html.escape(self.provn())}</pre>")


def card_prov(dataset: CachedDataset, card_id: int | str,
              models: Sequence[ModelAdapter | str] | None = None) -> CardProvenance:
    """The PROV document of one card of ``dataset`` (from the cache index alone).

    ``models`` limits the predictions to those models (adapters, or cached model names or
    signatures, as ``pad-assets audit -m`` takes); by default every cached model's chain
    is included. A card whose image is cached but not yet predicted gets the manifest ->
    download -> image part. Raises ``InvalidInputError`` for a card that is neither in
    the cached manifest nor cached.
    """
    from prov.model import ProvDocument

    cid = card_id_of(card_id)
    chains = collect_chains(dataset, models, card_ids=[cid])
    doc = prov_doc(dataset.name, chains)
    if not chains:
        chain = _image_only_chain(dataset, cid)
        prov_raw(doc, dataset.name, chain)
    content = _label_activities(doc.to_json())
    document = ProvDocument.deserialize(content=json.dumps(content), format="json")
    return CardProvenance(dataset.name, cid, document, len(chains))


def _label_activities(content: dict[str, Any]) -> dict[str, Any]:
    """Give each activity a short ``prov:label`` (``predict tiny_onnx 5d7dcf13ea8c``) so the
    picture names it instead of printing a 64-digit id."""
    for ident, attrs in content.get("activity", {}).items():
        if "prov:label" in attrs:
            continue
        kind, _, key = ident.partition(":")[2].partition("/")
        what = attrs.get("pad:model") or attrs.get("pad:pipeline") or ""
        attrs["prov:label"] = " ".join(p for p in (kind.replace("_", " "), what, key[:12]) if p)
    return content


def _image_only_chain(dataset: CachedDataset, card_id: int) -> dict[str, Any]:
    """The raw part of a chain for a card that no cached prediction covers yet."""
    card = dataset.store.cards(dataset.name, [card_id]).get(card_id)
    cm = cached_manifest(dataset)
    row = None
    if cm is not None:
        rows = cm.manifest.rows
        match = rows[rows["card_id"] == card_id]
        row = match.iloc[0].to_dict() if len(match) else None
    if card is None or not card.get("raw_key") or card.get("status") != "ok":
        if row is None:
            raise InvalidInputError(
                f"card {card_id} is not in the cached manifest of {dataset.name!r} and not "
                "cached: expected a card id of this dataset (see dataset.cards())")
        why = (card or {}).get("detail") or "its image is not cached yet"
        raise InvalidInputError(
            f"card {card_id} of {dataset.name!r} has no provenance yet: {why}; run "
            "download_and_cache() or apply_model() first")
    rk = card["raw_key"]
    return {"card_id": card_id, "row": row, "raw_key": rk,
            "raw": dataset.store.entries([rk]).get(rk), "manifest": cm}
