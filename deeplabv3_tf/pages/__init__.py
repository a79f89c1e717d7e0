"""Pages people look at: the records page (`tools/inspect_records.py`), the evaluation
page, and the headless browser the tests and `tools/screenshot.py` check pages with."""
