"""The pure core: scores, windows, verdicts and policies; plain Python, no Kafka."""
