"""What people and tools read: the HTML report, Markdown summaries, results exports, number formatting."""
