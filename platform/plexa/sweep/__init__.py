"""Architecture search on Ray Tune: plain-data search spaces (`space`), a regularised-evolution
searcher (`evolution`), the per-trial training (`trial`), ONNX Runtime latency (`latency`) and
the metric-vs-latency Pareto front (`pareto`). The runner that ties them together is
`plexa.runners.sweep`."""
