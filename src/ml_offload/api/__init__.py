"""HTTP entry point: thin routes per dialect over the services."""
