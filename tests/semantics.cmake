# Semantics suites: the guide's examples, PEP 567 behaviour, tokens, misuse.
cv_add_test(test_guide test_guide.c)
cv_add_test(test_pep567 test_pep567.c)
cv_add_test(test_tokens test_tokens.c)
cv_add_test(test_misuse test_misuse.c)
