"""PySpark and batch jobs of the pipeline: build sequences, embed users, build the index,
publish; the one Spark bootstrap (`spark`), input checks and a loopback standalone cluster."""
