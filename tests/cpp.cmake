# The C++ header (ctxvars.hpp) and its suite.
