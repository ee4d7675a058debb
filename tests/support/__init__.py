"""Test-only helpers: private, password-enforcing database servers for the suite.

Nothing here is imported by the product; see tests/conftest.py for the fixtures.
"""
