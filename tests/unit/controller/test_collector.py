import gc
from collections.abc import Iterator

import pytest

from pilotfish.controller.collector import (
    YOUNG_GENERATION_THRESHOLD,
    pace_collector_for_control_plane,
)


@pytest.fixture(autouse=True)
def restore_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_the_young_generation_waits_longer_and_the_older_two_keep_their_pace() -> None:
    gc.set_threshold(700, 10, 10)
    assert pace_collector_for_control_plane() == (700, 10, 10)
    assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, 10, 10)


def test_a_process_already_collecting_less_often_keeps_its_threshold() -> None:
    gc.set_threshold(200_000, 5, 3)
    pace_collector_for_control_plane()
    assert gc.get_threshold() == (200_000, 5, 3)


def test_collections_stop_during_a_burst_of_short_lived_containers() -> None:
    gc.set_threshold(700, 10, 10)
    pace_collector_for_control_plane()
    gc.collect()
    before = gc.get_stats()[0]["collections"]
    held = [{"n": i} for i in range(YOUNG_GENERATION_THRESHOLD // 2)]
    assert gc.get_stats()[0]["collections"] == before
    del held
