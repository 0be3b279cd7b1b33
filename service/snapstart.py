"""SnapStart: what each copy restored from the function's snapshot redoes before its first request.

Lambda runs init once, when a version is published, with the snapshot data loaded by then
(``start_in_lambda``), and restores every new execution environment from that image, maybe
days later. The after-restore hook registered here, in order:

1. reseeds :mod:`random`: botocore's retry jitter draws from it, and every copy restored from
   one image would otherwise back off in lockstep;
2. gives the S3 store a fresh client: the image's pooled connections are gone, and a new
   client resolves credentials again;
3. expires the TTL gate and runs one bounded, conditional pointer check (the cache's refresh
   wait): the image may hold a version older than the one ``CURRENT`` names now.

The hook never raises, because Lambda fails the restore (``Runtime.AfterRestoreError``) when an
after-restore hook does. On any failure it leaves the check to the next one (the first request,
or the refresher after its response) and says so in a log line. ``snapshot_restore_py`` comes
with the managed runtime (a dev dependency here); without it nothing is registered.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

from loaders.store import S3Store, make_s3_client
from service.cache import CheckOutcome

try:
    import snapshot_restore_py
except ImportError:  # not in this environment: nothing to register with
    snapshot_restore_py = None

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.cache import SnapshotCache
    from service.settings import Settings

# Created at module scope so that the handler's Powertools set-up turns these lines into JSON.
logger = logging.getLogger(__name__)


class RestoreHook:
    """The after-restore hook of one container's cache (module docstring).

    Parameters
    ----------
    cache : SnapshotCache
        The cache whose pointer is checked again.
    renew_client : callable, optional
        Gives the store a fresh client; None when the store has none (``file://``).
    reseed : callable, default random.seed
        Reseeds the module-level random generator from the system's entropy.
    """

    def __init__(
        self,
        cache: SnapshotCache,
        *,
        renew_client: Callable[[], None] | None = None,
        reseed: Callable[[], None] = random.seed,
        logger: logging.Logger | None = None,
    ) -> None:
        self._cache = cache
        self._renew_client = renew_client
        self._reseed = reseed
        self._log = logger or globals()["logger"]

    def __call__(self) -> None:
        """Run after a restore; never raises."""
        try:
            self._restore()
        except Exception:  # noqa: BLE001 - a raising hook fails the restore; stale beats down
            self._log.exception("after restore: hook failed; the next check reads the pointer")
            self._cache.expire()

    def _restore(self) -> None:
        self._reseed()
        if self._renew_client is not None:
            try:
                self._renew_client()
            except Exception as exc:  # noqa: BLE001 - logged; the old client may still work
                self._cache.expire()
                self._log.warning(
                    "after restore: no new S3 client (%s: %s); the next check reads the pointer",
                    type(exc).__name__,
                    exc,
                )
                return
        self._cache.expire()
        outcome = self._cache.check_if_due(wait_seconds=self._cache.refresh_wait_seconds)
        if outcome is CheckOutcome.FAILED:
            self._cache.expire()  # a failed check waits a TTL; this one is not worth that
            self._log.warning("after restore: pointer check failed; the next check tries again")
        elif outcome is CheckOutcome.PENDING:
            self._log.warning(
                "after restore: pointer check still running; serving %s meanwhile",
                self._cache.version,
            )
        else:
            outcome_text = "no check" if outcome is None else outcome.value
            self._log.info(
                "after restore: pointer check %s; serving %s", outcome_text, self._cache.version
            )


def register_restore_hook(cache: SnapshotCache, settings: Settings) -> RestoreHook | None:
    """Register the after-restore hook for ``cache``; None when ``snapshot_restore_py`` is missing.

    Call it during init, from a module the handler module imports: Lambda ignores hooks
    registered anywhere else.
    """
    if snapshot_restore_py is None:
        return None
    hook = RestoreHook(cache, renew_client=_client_renewer(cache, settings))
    snapshot_restore_py.register_after_restore(hook)
    return hook


def _client_renewer(cache: SnapshotCache, settings: Settings) -> Callable[[], None] | None:
    """Replaces the S3 store's client with one built now; None for a store without one."""
    store = getattr(cache.source, "store", None)
    if not isinstance(store, S3Store):
        return None

    def renew() -> None:
        # One reference assignment: a check in flight keeps the client it started with.
        store.client = make_s3_client(settings.storage)

    return renew
