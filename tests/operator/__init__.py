"""Tests of the expiry operator (package expiry_operator)."""
