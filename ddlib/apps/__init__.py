"""Applications of distilled sets (issue 13; families-2.md part B): each a pipeline stage over the sets that
`distill` writes, reusing `evaluate`, the networks and the registry. `continual`: class-incremental learning with a
distilled memory; `robustness`: adversarial attacks and corruptions; `privacy`: membership inference (LiRA); `nas`:
the sets as an architecture-search proxy; `federated`: clients that send distilled sets instead of weights. Each
module's `check` is its part of the grid check (ddlib/grid.py)."""
