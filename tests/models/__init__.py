"""Per-model tests: construction, training logic, options and OpenVINO parity of each model."""
