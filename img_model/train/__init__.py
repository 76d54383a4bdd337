"""Training a run: its configuration, seeding, the trainer and its log."""
