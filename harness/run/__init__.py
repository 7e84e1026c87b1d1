"""How a scenario runs: the orchestrator, the runner protocol, the runner process and serving."""
