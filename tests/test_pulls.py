"""The explicit pulls give up in time, with the reason, and never download anything on their own."""

from __future__ import annotations

import time

import pytest

from services.clip_models import ClipSpec, ModelUnavailableError, pull_weights
from services.pulls import PullError, pull_with_timeout


def test_a_stalled_pull_stops_at_its_timeout_and_a_failing_one_says_why():
    started = time.monotonic()
    with pytest.raises(PullError, match="took over 0s"):
        pull_with_timeout(lambda: time.sleep(5), 0.3, "slow/model")
    assert time.monotonic() - started < 2
    with pytest.raises(PullError, match="could not download broken/model: boom"):
        pull_with_timeout(lambda: (_ for _ in ()).throw(OSError("boom")), 5, "broken/model")
    assert pull_with_timeout(lambda: "/cache/file", 5, "ok/model") == "/cache/file"


def test_pull_refuses_an_unknown_tag_before_any_network():
    with pytest.raises(ModelUnavailableError, match="no pretrained tag 'nonsense'"):
        pull_weights(ClipSpec("ViT-B-32", "nonsense"), 5)
