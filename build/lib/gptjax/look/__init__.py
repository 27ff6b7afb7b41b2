"""Looking inside a trained model: parameters, next-token tables, attention, embeddings, the logit lens."""
