"""Tests mirror the packages: tests/training, tests/export, tests/service."""
