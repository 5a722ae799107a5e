"""The lower bound of any NumPy forward (conformance.tools.numpy_ceiling): its blocks, its sums, its command."""

from __future__ import annotations

import pytest

from conformance.tools import numpy_ceiling as nc


@pytest.mark.parametrize("T", [64, 100, 128, 300, 4096])
@pytest.mark.parametrize("bq", [64, 128, 512])
def test_causal_blocks_cover_every_query_once_and_see_exactly_its_keys(T, bq):
    rows = []
    for i0, kend in nc.blocks(T, bq):
        rows += list(range(i0, kend))
        assert kend == min(i0 + bq, T)  # the block's last query sees keys 0..kend-1, no more
    assert rows == list(range(T))
    # the scores a causal head must exponentiate: T (T + 1) / 2, all inside the blocks' rectangles
    assert nc.visible_scores(1, T) == nc.H * T * (T + 1) // 2
    assert sum((kend - i0) * kend for i0, kend in nc.blocks(T, bq)) >= T * (T + 1) // 2


@pytest.fixture
def timed(monkeypatch):
    """Every timing replaced by a fixed figure: proj 0.05 s, exp and subtract 1 and 0.25 ns a score,
    the attention matmuls 0.1 s at NumPy's BLAS threads and 0.16 s at one thread, SDPA 0.2 s."""
    per_call = {"exp": 1e-9, "subtract": 0.25e-9}

    def best_s(f, repeats):
        called = [n for n in f.__code__.co_names if n in per_call]  # the ufunc the lambda calls, if any
        return per_call[called[0]] * 128 * 4096 if called else 0.05  # else the projections

    monkeypatch.setattr(nc, "best_s", best_s)
    threads = {"n": 2}

    def attn(B, T, repeats):
        return (0.1, "blas") if threads["n"] > 1 else (0.16, "one")

    class Limits:
        def __init__(self, n):
            self.old = threads["n"]
            threads["n"] = n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            threads["n"] = self.old

    import threadpoolctl

    monkeypatch.setattr(threadpoolctl, "threadpool_limits", Limits)
    monkeypatch.setattr(nc, "attn_matmuls_s", attn)
    monkeypatch.setattr(nc, "sdpa_s", lambda B, T, repeats, backward: 0.2)
    monkeypatch.setattr(nc.os, "sched_getaffinity", lambda pid: {0, 1})


def test_the_forward_bound_is_its_parts_at_their_best(timed):
    c = nc.ceiling(1024, repeats=1)
    n = 4 * 8 * 1024 * 1025 // 2  # B = 4: the causal scores
    assert c["attn"] == pytest.approx(0.08)  # one thread's 0.16 s over two cores beats 0.1 s at two
    assert c["exp"] == pytest.approx(n * 1e-9 / 2)
    assert c["bound"] == pytest.approx(0.05 + 0.08 + n * 1e-9 / 2)
    assert c["elementwise"] == 0 and c["sdpa"] == 0.2


def test_the_backward_bound_counts_flashattention_2s_work(timed):
    c = nc.ceiling(1024, repeats=1, backward=True)
    n = 4 * 8 * 1024 * 1025 // 2
    assert c["proj"] == pytest.approx(3 * 0.05)  # each matmul's backward: two of its size
    assert c["attn"] == pytest.approx(3.5 * 0.08)  # 7 attention matmuls against the forward's 2
    assert c["exp"] == pytest.approx(2 * n * 1e-9 / 2)  # the forward's, and P recomputed
    assert c["elementwise"] == pytest.approx(2 * n * 0.25e-9 / 2)  # dS = P * (dP - delta)
    assert c["bound"] == pytest.approx(c["proj"] + c["attn"] + c["exp"] + c["elementwise"])


def test_the_command_prints_a_row_whose_bound_is_its_parts(capsys):
    assert nc.main(["--T", "64", "--repeats", "1"]) == 0
    row = capsys.readouterr().out.splitlines()[-1].split()
    B, T, proj, attn, exp, elem, bound = row[:7]
    assert (B, T) == ("64", "64")
    assert float(bound) == pytest.approx(float(proj) + float(attn) + float(exp) + float(elem), abs=0.25)
    assert float(proj) > 0 and float(attn) > 0 and float(exp) > 0


@pytest.mark.parametrize("argv, named", [(["--T", "100"], "--T [100]"), (["--T", "32"], "--T [32]"),
                                         (["--repeats", "0"], "--repeats 0")])
def test_bad_values_are_named(argv, named, capsys):
    with pytest.raises(SystemExit) as e:
        nc.main(argv)
    assert e.value.code == 2 and named in capsys.readouterr().err
