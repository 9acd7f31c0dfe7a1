"""Stand-alone studies, each one question measured on a throwaway database or stack and
each run as `python -m bench.studies.<name>` (docs/benchmarks.md, docs/reliability.md)."""
