"""Stored artefacts and their formats: where each lives under the data root (`layout`), how
it is written so that no reader sees half of it (`storage`), the pointer to the served
version (`pointer`), user vectors and item embeddings (`vectors`) and the sharded FAISS
index files (`index`). Depends only on `schemas`; every other package reads and writes
artefacts through this one."""
