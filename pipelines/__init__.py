"""End-to-end recipes (dataset + feature presets + training config), run stage by stage through the project's
commands (img-pipeline)."""
