"""``mask_secrets``: Airflow's ``mask_secret`` for syncs that handle thousands of secrets in one process.

Airflow's masker rebuilds a single regex of every secret it holds each time one is added, so n secrets cost
O(n²) regex compilation: an InfraZen chunk (each user's own credentials, PEM keys included, and a token per
provider account) spent more CPU there than on its API calls. Here the masker's regex is replaced by layers
(``Layers``): a new secret is compiled alone, and layers are merged two by two as they reach the same size,
so adding n secrets compiles each one O(log n) times and a log line goes through O(log n) regexes. Airflow's own
``add_mask`` (e.g. a connection password) still rebuilds one regex of every pattern, ours included.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterable

from airflow.sdk._shared.secrets_masker import _secrets_masker

_lock = threading.Lock()


class Layers:
    """Stands in for the masker's compiled regex, which it only uses through ``sub`` (and truthiness): the same
    patterns, in several regexes of doubling sizes."""

    def __init__(self, layers: list[tuple[frozenset[str], re.Pattern]]):
        self.layers = layers

    def sub(self, replacement: str, text: str) -> str:
        for _, regex in self.layers:
            text = regex.sub(replacement, text)
        return text

    def add(self, patterns: set[str]) -> Layers:
        layers = [*self.layers, (frozenset(patterns), _compile(patterns))]
        while len(layers) > 1 and len(layers[-2][0]) <= len(layers[-1][0]):
            merged = layers[-2][0] | layers[-1][0]
            layers[-2:] = [(merged, _compile(merged))]
        return Layers(layers)


def _compile(patterns: Iterable[str]) -> re.Pattern:
    # The longest first: a secret that contains another one of the same layer is masked whole.
    return re.compile("|".join(sorted(patterns, key=len, reverse=True)))


def mask_secrets(values: Iterable[str]) -> None:
    """Mask these secrets in this process's logs (and tell the task's supervisor, as ``mask_secret`` does)."""
    masker = _secrets_masker()
    with _lock:
        fresh = {v for v in values if v and len(v) >= masker.min_length_to_mask}
        new = {re.escape(v) for v in fresh} - masker.patterns
        if not new:
            return
        current = masker.replacer
        if not isinstance(current, Layers):  # Airflow's own regex (or none): it becomes the first layer
            current = Layers([(frozenset(masker.patterns), current)] if current else [])
        masker.patterns |= new
        masker.replacer = current.add(new)
    with contextlib.suppress(Exception):  # outside a task (dag.test, tests) there is no supervisor
        from airflow.sdk.execution_time import task_runner
        from airflow.sdk.execution_time.comms import MaskSecret

        if comms := getattr(task_runner, "SUPERVISOR_COMMS", None):
            comms.send(MaskSecret(value=sorted(fresh)))
