"""The story/gate harness: story cards, evidence, verdicts and reports."""
