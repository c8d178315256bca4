"""PACS-style folder watcher: series dropped into an inbox, results in an outbox.

``python -m watcher --inbox IN --outbox OUT`` runs it as a service; the web app runs
:class:`WatcherService` in its own process with its own pipeline. See docs/watcher.md.
"""

from .config import WatcherConfig, load_config
from .service import WatcherService

__all__ = ["WatcherConfig", "WatcherService", "load_config"]
