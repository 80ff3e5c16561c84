"""A local emulator of the Valence and Valsea APIs (not an emotion model)."""
