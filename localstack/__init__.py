"""Local stack tooling apart from the product path: SeaweedFS launcher, sample recordings, the demo."""
