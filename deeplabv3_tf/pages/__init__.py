"""Pages people look at: the evaluation page, and the headless browser the tests
and `tools/screenshot.py` check pages with."""
