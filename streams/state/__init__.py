"""Exact state over at-least-once delivery: offsets, watermarks, deduplication, batch envelopes."""
