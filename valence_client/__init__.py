"""Typed clients for the Valence emotion API and the Valsea prosody API."""
