"""Data plane of a job: TFRecord/Example I/O and the datasets built on it."""
