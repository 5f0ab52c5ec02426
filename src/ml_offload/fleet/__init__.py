"""Fleet membership: nodes publish heartbeats with leases in the shared database."""
