"""Benchmarks (``citechat bench``): measured in one run, reported as JSON and a Markdown table, never as tests."""
