"""Raw logs in: generated Tmall-like logs (`sample_data`) and importers of public data sets
(`importers`), both writing the RAW_EVENTS partitions that `jobs.build_sequences` reads."""
