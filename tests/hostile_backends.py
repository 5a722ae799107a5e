"""Backends written for tests/test_honest_runs.py: each tries to make a run lie or stop.

They are not in `conformance.mutants.misbehaving` (the suite's own corpus): these reproduce
the defects a hostile user found, one class per trick. Each computes correctly through
`ForwardOnly` and then does its one bad thing in `result`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

import numpy as np

from conformance.mutants.misbehaving import ForwardOnly
from impls.base import Capabilities


class RaisesKeyboardInterrupt(ForwardOnly):
    """forward raises KeyboardInterrupt, as if the user had pressed Ctrl-C."""

    name = "hostile-keyboard-interrupt"

    def result(self, out, x):
        raise KeyboardInterrupt("raised by the backend")


class RaisesSystemExit(ForwardOnly):
    """forward calls sys.exit(0)."""

    name = "hostile-system-exit"

    def result(self, out, x):
        sys.exit(0)


class ExitsZero(ForwardOnly):
    """forward ends its process with os._exit(0): a 'successful' exit in the middle of a check."""

    name = "hostile-exit-zero"

    def result(self, out, x):
        os._exit(0)


class ChangesProcessState(ForwardOnly):
    """forward makes NumPy raise on every floating-point warning, leaves the working directory,
    re-enables Ctrl-C as KeyboardInterrupt and sets an environment variable, and returns NaN once
    the state is changed (so its own checks fail and nobody else's should)."""

    name = "hostile-process-state"

    def result(self, out, x):
        np.seterr(all="raise")
        os.chdir("/")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ["MHA_HOSTILE"] = "1"
        return out * np.nan


class AvailabilityRaises(ForwardOnly):
    """availability() raises instead of returning None or a reason."""

    name = "hostile-availability-raises"

    def availability(self):
        raise RuntimeError("probing the device failed")


class PrintsALot(ForwardOnly):
    """forward prints 20 MB per call, half through sys.stdout and half straight to file descriptor 1."""

    name = "hostile-prints-a-lot"
    MB = 20

    def result(self, out, x):
        line = "x" * 1023 + "\n"
        sys.stdout.write(line * (self.MB * 512))
        sys.stdout.flush()
        os.write(1, (line * (self.MB * 512)).encode())
        return out


class Segfaults(ForwardOnly):
    """forward segfaults (reads address 0)."""

    name = "hostile-segfault"

    def result(self, out, x):
        ctypes.string_at(0)
        return out


class SegfaultsFloat32Only(Segfaults):
    """Segfaults, and declares float32 only: its other dtypes stay unsupported after the crash."""

    name = "hostile-segfault-float32-only"
    capabilities = Capabilities(dtypes=("float32",), device="cpu", key_padding_mask=True, qkv_bias=True,
                                dropout="replay")


def _segfaulter(name: str) -> type:
    return type(f"Segfaults_{abs(hash(name))}", (Segfaults,), {"name": name, "__doc__": Segfaults.__doc__})


#: Twelve segfaulting backends, more than pytest-xdist's default restart budget for 2 workers
MANY_SEGFAULTS = [f"hostile-segfault-{i:02d}" for i in range(12)]
#: Names that broke crash attribution when it parsed test ids
ODD_NAMES = {"cafe": "café", "newline": "new\nline"}

for _i, _name in enumerate(MANY_SEGFAULTS):
    globals()[f"Segfault{_i:02d}"] = _segfaulter(_name)
Cafe = _segfaulter(ODD_NAMES["cafe"])
NewLine = _segfaulter(ODD_NAMES["newline"])


class _Input(np.ndarray):
    """An input array as ToNumpyRaises hands it out: the one kind its to_numpy refuses."""


class ToNumpyRaises(ForwardOnly):
    """to_numpy refuses the backend's own input arrays: nothing about mutation can be seen."""

    name = "hostile-to-numpy-raises"

    def from_numpy(self, a, dtype=None):
        return super().from_numpy(a, dtype).view(_Input)

    def to_numpy(self, a):
        if isinstance(a, _Input):
            raise RuntimeError("to_numpy is not available for inputs")
        return a

    def result(self, out, x):
        return np.asarray(out).view(np.ndarray)


#: A lone surrogate: what os.fsdecode or surrogateescape makes of an undecodable byte
LONE = b"\xff".decode("utf-8", "surrogateescape")


class RaisesLoneSurrogate(ForwardOnly):
    """forward raises an exception whose message holds a lone surrogate."""

    name = "hostile-surrogate-message"

    def result(self, out, x):
        raise RuntimeError(f"bad byte {LONE} in a path")


class NamedLoneSurrogate(ForwardOnly):
    """A correct backend whose name holds a lone surrogate."""

    name = f"hostile-surrogate-{LONE}-name"


class RaisesHugeMessage(ForwardOnly):
    """forward raises SystemExit with a 20 MB one-line message (a BaseException's message is
    not cut by Runner.call)."""

    name = "hostile-huge-message"

    def result(self, out, x):
        raise SystemExit("m" * (20 << 20))


class HugeSkipReason(ForwardOnly):
    """availability() returns a 2 MB reason."""

    name = "hostile-huge-skip-reason"

    def availability(self):
        return "r" * (2 << 20)


class HugeName(ForwardOnly):
    """A correct backend with a 100,000-character name."""

    name = "hostile-huge-name-" + "n" * 100_000


class BlocksAlarm(ForwardOnly):
    """forward blocks SIGALRM in its thread, then sleeps for a day: no soft limit can reach it."""

    name = "hostile-blocks-alarm"

    def result(self, out, x):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(86400)
        return out


class IgnoresAlarm(ForwardOnly):
    """forward ignores SIGALRM, then sleeps for a day."""

    name = "hostile-ignores-alarm"

    def result(self, out, x):
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        time.sleep(86400)
        return out


class TampersWithOut(ForwardOnly):
    """forward fakes numpy's crash marker in <out>/.crashed/, deletes <out>/.records and
    <out>/.plan.json, then crashes its worker (the replacement must still know the plan).
    The run directory comes from $MHA_HOSTILE_OUT (set by the test)."""

    name = "hostile-tampers-with-out"

    def result(self, out, x):
        import hashlib
        import shutil
        from pathlib import Path

        run = Path(os.environ["MHA_HOSTILE_OUT"])
        (run / ".crashed").mkdir(exist_ok=True)
        (run / ".crashed" / hashlib.sha256(b"numpy").hexdigest()[:20]).write_text("faked")
        shutil.rmtree(run / ".records", ignore_errors=True)
        (run / ".plan.json").unlink(missing_ok=True)
        os._exit(1)


class ChangesBlasThreads(ForwardOnly):
    """forward sets every loaded BLAS/OpenMP library to 3 threads (threadpoolctl) and leaves it so."""

    name = "hostile-blas-threads"

    def result(self, out, x):
        from threadpoolctl import threadpool_limits

        threadpool_limits(3)
        return out


class PrintsBlasThreads(ForwardOnly):
    """A correct backend that prints the BLAS/OpenMP thread counts it runs with."""

    name = "hostile-prints-blas-threads"

    def result(self, out, x):
        from threadpoolctl import threadpool_info

        print("blas threads", sorted({i["num_threads"] for i in threadpool_info()}))
        return out


class _Unprintable(RuntimeError):
    def __str__(self) -> str:
        raise ValueError("no message for you")


class RaisesUnprintable(ForwardOnly):
    """forward raises an exception whose str() raises."""

    name = "hostile-unprintable-exception"

    def result(self, out, x):
        raise _Unprintable()


class LeaksSeterr(ForwardOnly):
    """forward makes NumPy raise on every floating-point warning and returns a correct output:
    the spec's arithmetic later in the same example must not pay for it."""

    name = "hostile-leaks-seterr"

    def result(self, out, x):
        np.seterr(all="raise")
        return out


def _grads_backend(name: str, finish) -> type:
    from conformance.mutants.base import PlainBackend

    return type(f"Grads_{abs(hash(name))}", (PlainBackend,), {"name": name, "finish_grads": finish})


class _KeysRaise(dict):
    def keys(self):
        raise RuntimeError("keys() is broken")


class _ArraysRaises:
    def arrays(self):
        raise RuntimeError("arrays() is broken")


#: backward returns a mapping with a non-string key, one whose keys() raises, and an object
#: whose arrays() raises
NonStringGradKey = _grads_backend("hostile-grad-int-key", lambda self, g: {**g, 1: g["dx"]})
GradKeysRaise = _grads_backend("hostile-grad-keys-raise", lambda self, g: _KeysRaise(g))
GradArraysRaises = _grads_backend("hostile-grad-arrays-raises", lambda self, g: _ArraysRaises())


class LeaksMemory(ForwardOnly):
    """forward keeps 16 MB alive per call (written, so resident), as a cache that never evicts.
    (8 MB left a check of 8 to 10 calls within 4 MB of the test's 64 MB limit once a garbage
    collection and malloc_trim had given back the suite's own temporaries.)"""

    name = "hostile-leaks-memory"
    kept: list = []

    def result(self, out, x):
        self.kept.append(np.ones(2 << 20))
        return out


class GetattrRaises(ForwardOnly):
    """Any attribute it does not have raises RuntimeError, not AttributeError (getattr's default
    and hasattr do not catch it)."""

    name = "hostile-getattr-raises"

    def __getattr__(self, name):
        raise RuntimeError(f"no attribute {name} here, and not an AttributeError either")


class CapabilitiesRaise(ForwardOnly):
    """Its capabilities are a property that raises."""

    name = "hostile-capabilities-raise"

    @property
    def capabilities(self):
        raise RuntimeError("capabilities are not ready")


class SleepsWhenSignalled(ForwardOnly):
    """Its first forward writes its pid to $MHA_TEST_INSIDE and sleeps $MHA_TEST_SLEEP seconds,
    then answers correctly: the window in which a test kills the controller."""

    name = "hostile-sleeps-once"

    def result(self, out, x):
        path = os.environ.get("MHA_TEST_INSIDE")
        if path and not os.path.exists(path):
            with open(path, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(float(os.environ.get("MHA_TEST_SLEEP", "5")))
        return out
