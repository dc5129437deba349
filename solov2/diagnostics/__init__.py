"""Dataset and training diagnostics: ``solov2 inspect`` (inspection.py) and its parts."""
