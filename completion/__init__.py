"""The completion path shared by the server, `training.evaluate` and the benchmarks.

One implementation each of: the settings (`settings`), the FIM prompt built from a
document's prefix and suffix within a token budget (`prompt`), generation with the stop
rules and the docstring retry (`pipeline`), and the post-processing filters
(`postprocess`). The server adds caching, cancellation, re-ranking and snippets on top;
what it sends the model and what it filters is this package, so an evaluation through
`pipeline.complete` measures the prompts the server really sends.

Nothing here imports the server or training.
"""
