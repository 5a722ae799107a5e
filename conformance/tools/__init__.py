"""One-off tools beside the suite: replay a failure, calibrate the tolerance model, the
false-failure sweep, the prepared GPU check. Each runs as `python -m conformance.<name>`."""
