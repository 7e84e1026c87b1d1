"""What the numbers say: statistics, the results document, budgets, run-to-run verdicts, history."""
