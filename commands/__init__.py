"""The `valence-pipeline` console script: one small, import-light module per group of sub-commands."""
