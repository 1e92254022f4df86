"""The worker's stages, one module each; `wiring` holds what they share."""
