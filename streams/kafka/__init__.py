"""Kafka as the monitor meets it: topics, the consumer group, fetch pacing, the local broker."""
