"""The `mlo` command line."""
