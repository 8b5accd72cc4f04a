"""Scoring: logits -> metrics, calibration, significance, what changed example by example, and scoring a finished
run (`evaluate_run`)."""
