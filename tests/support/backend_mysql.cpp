// PLACEHOLDER: replaced by the mysql backend's entry.
#include "support.hpp"
