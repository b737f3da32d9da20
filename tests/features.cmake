# Watchers, change handlers, flow suppression and tasks.
cv_add_test(test_watchers test_watchers.c)
cv_add_test(test_handlers test_handlers.c)
cv_add_test(test_flow test_flow.c)
