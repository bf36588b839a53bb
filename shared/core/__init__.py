"""The run engine: plan, state, the handlers, and the runtime (ports + run policy) they share."""
