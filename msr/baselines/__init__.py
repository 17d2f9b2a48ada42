"""Classical sequential baselines beside the fine-tuned VLM: SASRec, GRU4Rec and a popularity retriever.

Each trains on exactly the training interactions of msr's split (`data`), stops early on the
validation examples' full ranking (`train`), and writes what every recommender of msr writes:
scores of the `msr evaluate` candidates, full-ranking Recall/NDCG@K and a top-K retrieval table
(`pipeline`: `msr baselines train|evaluate`). Models: `sasrec`, `gru4rec`; `popularity` counts.
"""
