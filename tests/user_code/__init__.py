"""User code for the objective checks (tests/test_checks.py), named by import path."""
