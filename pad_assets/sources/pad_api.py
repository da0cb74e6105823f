"""Client for the PAD API v2 (projects, cards, card issues, neural networks, files)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import FetchError
from ..settings import Settings
from .http import Fetched, HttpClient
from .urls import normalize_url

IMAGE_MAX_BYTES = 64 * 1024 * 1024
WEIGHTS_MAX_BYTES = 1024 * 1024 * 1024


def allowed_origins(settings: Settings) -> set[str]:
    """The hosts pad_assets fetches from: the PAD server and an http(s) registry."""
    origins = {settings.api_url}
    if settings.registry_url.startswith(("http://", "https://")):
        origins.add(settings.registry_url)
    return origins


def http_client_for(settings: Settings) -> HttpClient:
    """A client whose redirects must pass the same URL policy as the URLs it is given."""
    origins = allowed_origins(settings)
    return HttpClient(timeout=settings.http_timeout, retries=settings.http_retries,
                      offline=settings.offline, workers=settings.download_workers,
                      url_policy=lambda url: normalize_url(url, settings.api_url, origins))


class PadApiClient:
    """Every GET the workflow needs; lists are paged with ``skip``/``limit`` like the server."""

    def __init__(self, settings: Settings, http: HttpClient | None = None) -> None:
        self.settings = settings
        self.http = http or http_client_for(settings)
        self.allowed_origins = allowed_origins(settings)

    def _get(self, path: str, params: dict[str, Any] | None = None, what: str = "") -> Any:
        return self.http.get_json(f"{self.settings.api_base}{path}", params,
                                  what=what or f"PAD API {path}")

    def _paged(self, path: str, page_size: int = 100) -> Iterator[dict[str, Any]]:
        skip = 0
        while True:
            page = self._get(path, {"skip": skip, "limit": page_size})
            if not isinstance(page, list):
                raise FetchError(f"{self.settings.api_base}{path}", 200,
                                 f"expected a JSON array, got {type(page).__name__}")
            yield from page
            if len(page) < page_size:
                return
            skip += page_size

    def projects(self) -> list[dict[str, Any]]:
        return list(self._paged("/projects"))

    def project(self, project_id: int) -> dict[str, Any]:
        return self._get(f"/projects/{int(project_id)}", what=f"project {project_id}")

    def project_cards(self, project_id: int) -> list[dict[str, Any]]:
        """Every card of a project (the server does not page this route)."""
        return self._get(f"/projects/{int(project_id)}/cards", what=f"cards of project {project_id}")

    def cards(self) -> Iterator[dict[str, Any]]:
        return self._paged("/cards")

    def card(self, card_id: int) -> dict[str, Any]:
        return self._get(f"/cards/{int(card_id)}", what=f"card {card_id}")

    def card_issues(self) -> list[dict[str, Any]]:
        return self._get("/cards/issues", what="card issue types")

    def neural_networks(self) -> list[dict[str, Any]]:
        return list(self._paged("/neural-networks"))

    def neural_network(self, model_id: int) -> dict[str, Any]:
        return self._get(f"/neural-networks/{int(model_id)}", what=f"model record {model_id}")

    def normalize(self, url: str) -> str:
        return normalize_url(url, self.settings.api_url, self.allowed_origins)

    def image(self, url: str) -> Fetched:
        """A card image and the URL it came from (a redirect's target, if it passed)."""
        return self.http.fetch(self.normalize(url), IMAGE_MAX_BYTES, what="card image")

    def image_bytes(self, url: str) -> bytes:
        return self.image(url).body

    def weights_bytes(self, url: str) -> bytes:
        # weights may be hundreds of MB: a longer total deadline than an image's
        return self.http.get_bytes(self.normalize(url), WEIGHTS_MAX_BYTES, what="model weights",
                                   deadline=max(self.http.deadline, 900.0))
