"""Which backends keep their bits across batches and between decoding and the forward (measured,
not checked): `python -m conformance.tools.bitwise_survey [-b NAME ...] [--cases N]`.

For each backend and dtype: N drawn batches of 2 to 3 sequences (the suite's strategies, size
regime included), each sequence run alone and compared bit for bit with its row of the batch;
and, for backends with a KV cache, N causal cases decoded token by token after a prefill of half
their tokens, compared bit for bit with the full forward's rows; a backend without one says
so. Where the backend has a raw library probe (`conformance.semantics.libraries`), one more
line: the library's last query computed alone over every key against its causal call's last
row, bit for bit (`conformance.semantics.declarations.library_decode`). Last, which backends
kept every bit in every case, for each promise: the measured basis for declaring
`Capabilities.batch_invariant` or `Capabilities.decode_invariant`. The figures in
docs/spec-decisions.md ("Batch invariance", "Decode invariance") come from this tool with --cases 40.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np


def survey(name: str, cases: int, kept: dict[str, list[str]] | None = None) -> list[str]:
    """Lines for one backend; `kept` collects, per promise, the backends that kept every bit."""
    from hypothesis.errors import NonInteractiveExampleWarning

    from conformance.suite import strategies as cs
    from conformance.suite.calls import Runner
    from impls.registry import resolve

    warnings.simplefilter("ignore", NonInteractiveExampleWarning)  # .example(): a survey, not a test
    b = resolve(name).backend
    reason = b.availability()
    if reason:
        return [f"{name}: not run ({reason})"]
    lines, batch_ok, decode_ok = [], True, b.capabilities.kv_cache and b.capabilities.causal
    for dtype in b.capabilities.dtypes:
        run = Runner(b, dtype)
        batches = cs.cases(b.capabilities, dtype, large=True, min_batch=2)
        changed = total = 0
        for _ in range(cases):
            c = batches.example()
            full = run.forward(c)  # (B, T, d_out)
            for j in range(c.B):
                kpm = None if c.key_padding_mask is None else c.key_padding_mask[j:j + 1]
                alone = run.forward(c.with_(x=c.x[j:j + 1], key_padding_mask=kpm))
                total += 1
                changed += not np.array_equal(alone, full[j:j + 1], equal_nan=True)
        line = f"{name} {dtype}: batch changes the bits of {changed} of {total} sequences"
        if b.capabilities.kv_cache and b.capabilities.causal:
            decoding = cs.cases(b.capabilities, dtype, causal=True, min_tokens=2, padding=False)
            differ = 0
            for _ in range(cases):
                c = decoding.example()
                full, w, t = run.forward(c), run.weights(c.params), max(1, c.T // 2)
                cache, ys = run.prefill(c.x[:, :t], w, c.config), []
                for i in range(t, c.T):
                    y, cache = run.decode("decode", c.x[:, i:i + 1], cache, w, c.config)
                    ys.append(y)
                differ += not np.array_equal(np.concatenate(ys, axis=1), full[:, t:], equal_nan=True)
            line += f"; decoding differs from the forward in {differ} of {cases} cases"
            decode_ok = decode_ok and differ == 0
        else:
            line += "; decoding not measured (" + ("no KV cache, Capabilities.kv_cache" if not b.capabilities.kv_cache
                                                   else "causal attention not supported") + ")"
        batch_ok = batch_ok and changed == 0
        lines.append(line)
    lines += _library_lines(name)
    if kept is not None:
        for promise, ok in (("batch_invariant", batch_ok), ("decode_invariant", decode_ok)):
            kept.setdefault(promise, []).extend([name] if ok else [])
    return lines


def _library_lines(name: str) -> list[str]:
    """The raw library's decode step against its causal forward, bit for bit, where it has a raw probe."""
    from conformance.semantics import probes as lp
    from conformance.semantics.declarations import library_decode
    from conformance.semantics.libraries import all_raw

    raw = next((r for r in all_raw() if r.name == name), None)
    if raw is None or raw.missing():
        return []
    value, detail = library_decode(raw, lp.inputs, lp._call)
    return [f"{name} library ({raw.library}): decoding {value}; {detail}"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m conformance.tools.bitwise_survey", description=__doc__.splitlines()[0])
    p.add_argument("-b", "--backend", action="append", default=None, help="backend name (default: the CPU built-ins)")
    p.add_argument("--cases", type=int, default=40, help="drawn cases per backend and dtype (default 40)")
    args = p.parse_args(argv)
    if args.cases < 1:
        p.error(f"--cases must be at least 1, got {args.cases}")
    kept: dict[str, list[str]] = {}
    for name in args.backend or ["numpy", "torch", "torch-sdpa", "torch-mha"]:
        for line in survey(name, args.cases, kept):
            print(line, flush=True)
    for promise, names in kept.items():
        print(f"{promise}: every bit kept in every case by {', '.join(names) or 'none of them'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
