"""Evaluation: the offline LongBench-style task suite, metrics, workloads and harness."""
