// PLACEHOLDER: replaced by the sqlite backend's entry.
#include "support.hpp"
