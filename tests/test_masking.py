"""usersync.masking: many secrets masked in one process, each compiled O(log n) times, none missed."""

from __future__ import annotations

import secrets


def test_many_secrets_are_all_masked():
    from airflow.sdk._shared.secrets_masker import _secrets_masker, redact
    from airflow.sdk.log import mask_secret
    from usersync.masking import Layers, mask_secrets

    mask_secret("an-airflow-secret-before")  # Airflow's own regex becomes our first layer
    keys = [f"key-{secrets.token_hex(8)}" for _ in range(300)]
    mask_secrets(keys[:100])  # a chunk's credentials at once
    for key in keys[100:]:  # then tokens one by one
        mask_secrets([key])
    mask_secrets([keys[0], "tiny"])  # known and too short: nothing to add

    replacer = _secrets_masker().replacer
    assert isinstance(replacer, Layers) and len(replacer.layers) <= 9  # O(log n) regexes, not one per secret
    for key in [*keys, "an-airflow-secret-before"]:
        assert redact(f"token={key};") == "token=***;"  # what the log processors call on every record

    mask_secret("an-airflow-secret-after")  # Airflow's add_mask rebuilds one regex of every pattern, ours too
    assert redact(f"{keys[7]} an-airflow-secret-after") == "*** ***"
