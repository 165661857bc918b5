"""QA generators over the spatio-temporal scene graph (VSI-Bench and VSTI-Bench task types).

``registry.GENERATORS`` maps each question type to its generator; ``common`` holds the row
type and the helpers they share; docs/data.md documents every task type."""
