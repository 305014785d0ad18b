//go:build cgo

// Only in the gosched-cgo fixtures (CGO_ENABLED=1): links runtime/cgo, so the runtime starts
// its threads with pthread_create, and the system linker links the binary (external
// linking), putting C code ahead of runtime.text.
package main

import _ "runtime/cgo"
