// Test hooks that make the failures the reliability tests need happen on demand, in a real process:
//   - a write failure: every AtomicFile write (checkpoints, shards, manifests, config.json) fails with
//     ENOSPC once `bytes` more bytes have been written, as a full disk would;
//   - a crash point: the process kills itself with SIGKILL when it reaches a named point of a
//     checkpoint save (between the files, before/after the renames), as a power cut would.
// Both are off unless a test turns them on, by these functions or by environment variables read
// once at the first write (so the real ultramem-train binary can be tested):
//   ULTRAMEM_TEST_ENOSPC_AFTER=<bytes>   ULTRAMEM_TEST_CRASH_AT=<point>[@<n>] (the n-th arrival, default 1)
// Points: docs/reliability.md (checkpoint.cpp calls crash_point()).
#pragma once
#include <cstdint>

namespace um::io {

// Writes fail with ENOSPC after `bytes` more bytes; a negative value turns the hook off.
void set_write_failure_after(int64_t bytes);
// Bytes left before the injected failure, or -1 when off. Called by the writer for every chunk.
int64_t write_failure_budget();
// Accounts `bytes` written; returns how many of them may actually be written before the injected
// failure (all of them when the hook is off).
size_t take_write_budget(size_t bytes);

// SIGKILLs the process when ULTRAMEM_TEST_CRASH_AT names `point` (at its n-th arrival).
void crash_point(const char* point);

}  // namespace um::io
