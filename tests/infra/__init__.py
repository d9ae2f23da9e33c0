"""Tests of the infrastructure fixtures (Redis, nginx) on the real servers."""
