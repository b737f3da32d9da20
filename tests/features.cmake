# Watchers, change handlers, flow suppression and tasks.
