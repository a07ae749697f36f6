"""Graph building blocks: chunked similarity, kNN, sparse graphs, partitioning and orderings."""
