// Clang thread-safety annotations (-Wthread-safety); they compile to nothing elsewhere.
#pragma once

#if defined(__clang__)
#define DISTRLOCK_TSA(x) __attribute__((x))
#else
#define DISTRLOCK_TSA(x)
#endif

#define GUARDED_BY(x) DISTRLOCK_TSA(guarded_by(x))
#define REQUIRES(...) DISTRLOCK_TSA(requires_capability(__VA_ARGS__))
#define EXCLUDES(...) DISTRLOCK_TSA(locks_excluded(__VA_ARGS__))
