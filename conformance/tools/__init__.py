"""One-off tools beside the suite: replay a failure, calibrate the tolerance model, the
false-failure sweep, the prepared GPU check (each runs as `python -m conformance.<name>`), the
time shares (`python -m conformance time-shares`); the bitwise survey, the reference's cost and
the lower bound of any NumPy forward (each `python -m conformance.tools.<name>`)."""
