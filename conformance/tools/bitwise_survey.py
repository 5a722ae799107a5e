"""Which backends keep their bits across batches and between decoding and the forward (measured,
not checked): `python -m conformance.tools.bitwise_survey [-b NAME ...] [--cases N]`.

For each backend and dtype: N drawn batches of 2 to 3 sequences (the suite's strategies, size
regime included), each sequence run alone and compared bit for bit with its row of the batch;
and, for backends with a KV cache, N causal cases decoded token by token after a prefill of half
their tokens, compared bit for bit with the full forward's rows. The figures in
docs/spec-decisions.md ("Batch invariance") come from this tool with --cases 40.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np


def survey(name: str, cases: int) -> list[str]:
    from hypothesis.errors import NonInteractiveExampleWarning

    from conformance.suite import strategies as cs
    from conformance.suite.calls import Runner
    from impls.registry import resolve

    warnings.simplefilter("ignore", NonInteractiveExampleWarning)  # .example(): a survey, not a test
    b = resolve(name).backend
    reason = b.availability()
    if reason:
        return [f"{name}: not run ({reason})"]
    lines = []
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
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m conformance.tools.bitwise_survey", description=__doc__.splitlines()[0])
    p.add_argument("-b", "--backend", action="append", default=None, help="backend name (default: the CPU built-ins)")
    p.add_argument("--cases", type=int, default=40, help="drawn cases per backend and dtype (default 40)")
    args = p.parse_args(argv)
    if args.cases < 1:
        p.error(f"--cases must be at least 1, got {args.cases}")
    for name in args.backend or ["numpy", "torch", "torch-sdpa", "torch-mha"]:
        for line in survey(name, args.cases):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
