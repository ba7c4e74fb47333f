// distrlock: distributed leases with fencing tokens, kept in a database every participant already shares.
// Include this header for the whole public API. See README.md for an example.
#pragma once

#include "distrlock/error.hpp"
#include "distrlock/lease.hpp"
#include "distrlock/lock.hpp"
#include "distrlock/manager.hpp"
#include "distrlock/options.hpp"
