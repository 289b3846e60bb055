"""Applications of distilled sets (issue 13; families-2.md part B): each a pipeline stage over the sets that
`distill` writes, reusing `evaluate`, the networks and the registry. `continual`: class-incremental learning
with a distilled memory."""
