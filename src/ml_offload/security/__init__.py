"""The security bridge: keys, rate limits, redaction and the audit log (see guard.py)."""
