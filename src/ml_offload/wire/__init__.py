"""Wire schemas and converters, pure."""
