"""Long-context evaluation: passkey / NIAH accuracy and perplexity against length, reports."""
