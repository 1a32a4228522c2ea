"""pytest plugin: registers the ``story`` marker.

Bootstrap version: the harness issue replaces this with the evidence writer and
card validation. Marker ids are validated against stories/*.toml when cards exist.
"""
import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "story(id, ...): the story ids (GT-0xx / GX-0xx) this test proves")
