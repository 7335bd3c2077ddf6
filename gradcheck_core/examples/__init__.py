"""Small models used by the demos, the tests and the benchmarks."""
