"""What a number is: the metric registry, counters derived from runner events, host and process state."""
