"""Window schedules: reference tables from the golden fixtures, causal schedule properties."""

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from dvd_ros.errors import InputError
from dvd_ros.stream.windows import (
    causal_tail_window,
    causal_window,
    causal_windows,
    eval_windows,
    offline_windows,
    pad_length,
)


@pytest.fixture(scope='module')
def golden(fixtures):
    return json.loads((fixtures / 'dvd_sliding_window_golden.json').read_text())


def _cases(table):
    for key, windows in table.items():
        total, window, overlap = (int(v) for v in re.findall(r'\d+', key))
        yield key, total, window, overlap, [tuple(w) for w in windows]


def test_offline_windows_match_reference_table(golden):
    cases = list(_cases(golden['window_index']['single_video']))
    assert len(cases) >= 10
    for key, total, window, overlap, expected in cases:
        assert offline_windows(total, window, overlap) == expected, key


def test_eval_windows_match_reference_table(golden):
    cases = list(_cases(golden['window_index']['eval_video']))
    assert len(cases) >= 10
    for key, total, window, overlap, expected in cases:
        assert eval_windows(total, window, overlap) == expected, key


def test_pad_length_matches_reference_table(golden):
    table = golden['pad_to_4n_plus_1']
    assert table
    for frames, padded in table.items():
        assert pad_length(int(frames)) == padded


def test_spec_examples():
    assert offline_windows(100, 81, 21) == [(0, 81), (19, 100)]
    assert offline_windows(300, 81, 21) == [(0, 81), (60, 141), (120, 201), (180, 261),
                                            (219, 300)]
    assert offline_windows(0, 81, 21) == [] == eval_windows(0, 81, 21)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 400), st.integers(1, 90), st.data())
def test_offline_windows_cover_everything(total, window, data):
    overlap = data.draw(st.integers(0, window - 1))
    for schedule in (offline_windows, eval_windows):
        wins = schedule(total, window, overlap)
        assert wins[0][0] == 0 and wins[-1][1] == total
        for (s0, e0), (s1, e1) in zip(wins, wins[1:]):
            assert s0 < s1 <= e0 < e1  # ordered, contiguous, overlapping (or touching)
        assert all(0 < e - s <= window for s, e in wins)
    assert all(e - s == min(window, total) for s, e in offline_windows(total, window, overlap))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 300), st.integers(1, 40), st.data(), st.sampled_from(['reanchor', 'pad']))
def test_causal_schedule_emits_each_frame_once(total, window, data, mode):
    overlap = data.draw(st.integers(0, window - 1))
    wins = causal_windows(total, window, overlap)
    tail = causal_tail_window(total, window, overlap, mode)
    emitted = []
    for k, w in enumerate(wins):
        assert w.index == k and w.end - w.start == window
        assert w.overlap == (0 if k == 0 else overlap)
        emitted += range(w.emit_start, w.end)
    if tail is not None:
        assert tail.end == total and tail.start <= tail.emit_start
        if wins:
            assert tail.overlap >= overlap and tail.end - tail.start <= window
        emitted += range(tail.emit_start, tail.end)
    assert emitted == list(range(total))


def test_causal_window_examples():
    assert causal_window(0, 81, 21) == causal_windows(81, 81, 21)[0]
    w = causal_window(2, 81, 21)
    assert (w.start, w.end, w.emit_start, w.overlap) == (120, 201, 141, 21)
    assert causal_tail_window(300, 81, 21, 'reanchor').start == 219
    assert causal_tail_window(300, 81, 21, 'pad').start == 240
    assert causal_tail_window(261, 81, 21) is None
    assert causal_tail_window(50, 81, 21).emit_start == 0


@pytest.mark.parametrize('window, overlap', [(0, 0), (9, 9), (9, -1), (9.0, 1), (True, 0)])
def test_bad_window_parameters_raise(window, overlap):
    with pytest.raises(InputError, match='window|overlap'):
        offline_windows(10, window, overlap)


def test_bad_lengths_raise():
    with pytest.raises(InputError):
        pad_length(0)
    with pytest.raises(InputError):
        offline_windows(-1, 9, 1)
    with pytest.raises(InputError, match='flush mode'):
        causal_tail_window(10, 9, 1, 'nope')
