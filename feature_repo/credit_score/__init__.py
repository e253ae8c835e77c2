"""Credit-score use case: will a loan application default (Feast's credit-scoring tutorial data)."""
