"""Metric names and their emission: the one table that the code and template.yaml's alarms share.

Both functions count in process and flush once per invocation as one CloudWatch embedded metric
format (EMF) document, through Powertools Metrics. Outside Lambda (the local server, tests,
``snapshotctl``) a recorder is built disabled: it still counts, so tests can read it, but it
never prints. Dimensions stay few: Powertools' ``service`` only, never a key or a version.
"""

from __future__ import annotations

import enum
import sys
import threading
from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_NAMESPACE = "CustomerLookup"
LOOKUP_SERVICE = "customer-lookup"
BUILDER_SERVICE = "snapshot-builder"


class Metric(enum.StrEnum):
    """Every metric either function emits; the value is its CloudWatch name."""

    # The lookup function.
    SNAPSHOT_AGE = "SnapshotAgeSeconds"
    LOOKUPS = "Lookups"
    MISSES = "Misses"
    BATCH_SIZE = "BatchSize"
    POINTER_CHECKS_UNCHANGED = "PointerChecksUnchanged"
    POINTER_CHECKS_LOADED = "PointerChecksLoaded"
    POINTER_CHECKS_REJECTED = "PointerChecksRejected"
    POINTER_CHECKS_FAILED = "PointerChecksFailed"
    POINTER_CHECKS_DEGRADED = "PointerChecksDegraded"
    LOAD_SECONDS = "SnapshotLoadSeconds"
    LOAD_ROWS = "SnapshotRows"
    LOAD_BYTES = "SnapshotBytes"
    COLD_STARTS = "ColdStarts"
    # Tiered mode: blocks read by range, the bytes they took, reads failed, and lookups the
    # block LRU answered.
    BLOCK_READS = "BlockReads"
    BLOCK_READ_BYTES = "BlockReadBytes"
    BLOCK_READ_FAILURES = "BlockReadFailures"
    BLOCK_CACHE_HITS = "BlockCacheHits"
    # The builder.
    BUILDS_ANNOUNCED = "BuildsAnnounced"
    BUILDS_SUPERSEDED = "BuildsSuperseded"
    BUILDS_REJECTED = "BuildsRejected"
    BUILDS_FAILED = "BuildsFailed"
    BUILDS_UNCHANGED = "BuildsUnchanged"
    BUILDS_PINNED = "BuildsPinned"
    QUERY_SECONDS = "BuildQuerySeconds"
    VALIDATE_SECONDS = "BuildValidateSeconds"
    PUBLISH_SECONDS = "BuildPublishSeconds"
    ROWS_ADDED = "RowsAdded"
    ROWS_REMOVED = "RowsRemoved"
    ROWS_CHANGED = "RowsChanged"
    ATHENA_BYTES_SCANNED = "AthenaBytesScanned"


# CloudWatch units by metric; anything not listed is a Count.
UNITS: dict[Metric, str] = {
    Metric.SNAPSHOT_AGE: "Seconds",
    Metric.LOAD_SECONDS: "Seconds",
    Metric.LOAD_BYTES: "Bytes",
    Metric.BLOCK_READ_BYTES: "Bytes",
    Metric.QUERY_SECONDS: "Seconds",
    Metric.VALIDATE_SECONDS: "Seconds",
    Metric.PUBLISH_SECONDS: "Seconds",
    Metric.ATHENA_BYTES_SCANNED: "Bytes",
}

# Which function emits each metric, for the template's alarms and the tests.
BUILDER_METRICS = frozenset(
    {
        Metric.BUILDS_ANNOUNCED,
        Metric.BUILDS_SUPERSEDED,
        Metric.BUILDS_REJECTED,
        Metric.BUILDS_FAILED,
        Metric.BUILDS_UNCHANGED,
        Metric.BUILDS_PINNED,
        Metric.QUERY_SECONDS,
        Metric.VALIDATE_SECONDS,
        Metric.PUBLISH_SECONDS,
        Metric.ROWS_ADDED,
        Metric.ROWS_REMOVED,
        Metric.ROWS_CHANGED,
        Metric.ATHENA_BYTES_SCANNED,
    }
)
LOOKUP_METRICS = frozenset(Metric) - BUILDER_METRICS


def pointer_check_metric(outcome: str) -> Metric:
    """The counter of one pointer-check outcome (``"loaded"`` -> ``PointerChecksLoaded``)."""
    return Metric(f"PointerChecks{outcome.capitalize()}")


def build_metric(outcome: str) -> Metric:
    """The counter of one build outcome (``"unchanged"`` -> ``BuildsUnchanged``)."""
    return Metric(f"Builds{outcome.capitalize()}")


class MetricsRecorder:
    """Counts and samples in process; :meth:`flush` writes them as one EMF document.

    Parameters
    ----------
    namespace : str
        The CloudWatch namespace.
    service : str
        The ``service`` dimension.
    enabled : bool
        Print on flush (in Lambda). When False, flush only clears.
    emit : callable, optional
        Where a document goes; Powertools prints it to stdout, which Lambda ships to
        CloudWatch Logs. Tests pass a list's ``append``.
    """

    def __init__(
        self,
        *,
        namespace: str,
        service: str,
        enabled: bool,
        emit: Callable[[str], None] | None = None,
    ) -> None:
        self.namespace = namespace
        self.service = service
        self.enabled = enabled
        self._emit = emit
        # Pointer checks run on a worker thread while a request may be counting.
        self._lock = threading.Lock()
        self._counts: defaultdict[Metric, float] = defaultdict(float)
        self._samples: defaultdict[Metric, list[float]] = defaultdict(list)
        self._provider: Any = None  # Powertools' EMF provider, built on the first flush

    def count(self, metric: Metric, value: float = 1) -> None:
        """Add ``value`` to a counter (summed into one datum per flush)."""
        with self._lock:
            self._counts[metric] += value

    def sample(self, metric: Metric, value: float) -> None:
        """Record one observation (each kept as a value of the datum)."""
        with self._lock:
            self._samples[metric].append(value)

    def pending(self) -> dict[Metric, float | list[float]]:
        """What the next flush would emit."""
        with self._lock:
            return {**self._counts, **{m: list(v) for m, v in self._samples.items()}}

    def flush(self) -> str | None:
        """Emit everything recorded since the last flush, as one EMF document, and clear it.

        Returns the document (None when disabled or when nothing was recorded).
        """
        with self._lock:
            counts, samples = dict(self._counts), dict(self._samples)
            self._counts.clear()
            self._samples.clear()
        if not self.enabled or not (counts or samples):
            return None
        return self._write(counts, samples)

    def _write(self, counts: dict[Metric, float], samples: dict[Metric, list[float]]) -> str:
        import json

        # Imported here: only a Lambda that flushes pays for it, never the local server.
        from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import (
            AmazonCloudWatchEMFProvider,
        )

        # One provider per recorder: building it (unit and resolution tables) is a third of
        # a flush, and a flush runs on every invocation.
        provider = self._provider
        if provider is None:
            provider = self._provider = AmazonCloudWatchEMFProvider(
                namespace=self.namespace, service=self.service
            )
        for metric, value in counts.items():
            provider.add_metric(name=metric.value, unit=UNITS.get(metric, "Count"), value=value)
        for metric, values in samples.items():
            # EMF carries at most 100 values per datum; a busy minute keeps its first 100.
            for value in values[:100]:
                provider.add_metric(name=metric.value, unit=UNITS.get(metric, "Count"), value=value)
        document = json.dumps(provider.serialize_metric_set(), separators=(",", ":"))
        provider.clear_metrics()
        if self._emit is not None:
            self._emit(document)
        else:  # stdout is how EMF reaches CloudWatch Logs, one line per document
            sys.stdout.write(document + "\n")
        return document


def quiet_recorder(service: str) -> MetricsRecorder:
    """A recorder that counts but never prints (tests, tools, anything outside Lambda)."""
    return MetricsRecorder(namespace=DEFAULT_NAMESPACE, service=service, enabled=False)
