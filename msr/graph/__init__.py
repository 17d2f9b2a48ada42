"""MLLMRec: a graph recommender on the same item and user summaries as the fine-tuned VLM.

Item texts and user preference texts are embedded by a frozen sentence encoder (`encode`); an
item-item graph built from training interactions only refines the item embeddings (`build`);
two small towers trained with BPR score users against items (`model`); `ranking` measures full
ranking; `pipeline` ties them to the run directory (`msr graph train|evaluate`, `run_graph`).
"""
